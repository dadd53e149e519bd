"""The whole VATT chain: the golden `vatt_e2e_tiny` case (features + prompt ids -> converter
states -> seeded MaskGIT tokens -> Encodec waveform) through networks built by
`build_vatt_networks` from files in the official layouts, and the tiny-vatt variant end to end."""

import dataclasses
import json

import pytest
import torch
from golden import assert_close, load_case
from selva_rt.runtime import maskgit
from selva_rt.runtime.errors import CheckpointError
from selva_rt.runtime.models.eva02 import preprocess
from selva_rt.runtime.models.vatt_networks import build_vatt_networks
from selva_rt.runtime.variants import TINY_VATT
from vatt_cases import golden_install, sampler_config

CASE = "vatt_e2e_tiny"


@pytest.fixture(scope="module")
def golden_files(tmp_path_factory):
    return golden_install(tmp_path_factory.mktemp("vatt"))


@pytest.fixture(scope="module")
def nets(golden_files):
    return build_vatt_networks(*golden_files)


@torch.no_grad()
def test_golden_chain(nets):
    """States, seeded tokens (>= 99.9 % equal, golden README) and the waveform of the tokens."""
    meta, t = load_case(CASE)
    states = nets.converter(t["in.input_ids"], t["in.video_input"], t["in.attention_mask"])
    assert_close(f"{CASE}.hidden_states", states, t["out.hidden_states"], 1e-4, 1e-3)
    c = nets.audio.config
    tokens = maskgit.generate(
        lambda x: nets.audio(x, states.float(), t["in.attention_mask"]),
        tuple(t["out.tokens"].shape[1:]),
        nets.audio.mask_id,
        maskgit.generators_for([int(t["in.seed"])]),
        sampler_config(load_case("vatt_sampler_small")[0]),
    )
    equal = (tokens == t["out.tokens"]).sum().item()
    print(f"{CASE}: {equal} of {tokens.numel()} tokens equal")
    assert equal >= 0.999 * tokens.numel()
    assert c.num_tokens == nets.encodec.config.bins
    audio = nets.encodec.decode(t["out.tokens"])
    assert_close(f"{CASE}.audio", audio, t["out.audio"], 1e-4, 2e-3)


@torch.no_grad()
def test_files_load_every_network(nets):
    """The eva02 tower from open_clip's file and the prompt tokenizer from the Vicuna folder."""
    meta, t = load_case("vatt_eva02_small")
    features = nets.image(preprocess(t["in.frames_u8"][:4], nets.image.config))
    assert_close("vatt_e2e_files.features", features, t["out.features"][:4], 1e-4, 1e-3)
    ids = nets.tokenizer.encode("sheep bleating")
    assert ids[0] == 1 and ids[-1] == 2 and len(ids) > 3


def test_refuses_a_foreign_base_folder(golden_files, tmp_path):
    variant, paths = golden_files
    folder = tmp_path / "other"
    folder.mkdir()
    hf = json.loads((paths["llm"] / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(hf, num_hidden_layers=40)))
    with pytest.raises(CheckpointError, match="num_hidden_layers 40 .expected 2.") as err:
        build_vatt_networks(variant, dict(paths, llm=folder))
    assert "\n" not in str(err.value)


@torch.no_grad()
def test_tiny_vatt_end_to_end():
    """tiny-vatt: random weights made locally through the official layouts; frames -> eva02
    features -> converter states -> tokens -> 10 s waveform (2 sampling steps here)."""
    c = TINY_VATT.generator
    nets = build_vatt_networks(TINY_VATT, {})
    # 10 distinct frames, each held for 5 feature frames (a 1 fps picture): less to resample.
    frames = torch.randint(0, 256, (c.converter.video_frames // 5, 24, 32, 3), dtype=torch.uint8)
    features = nets.image(preprocess(frames, c.image)).repeat_interleave(5, 0)
    assert features.shape == (c.converter.video_frames, c.image.embed_dim)
    ids, mask = nets.tokenizer.batch("sheep bleating")
    states = nets.converter(ids, features[None], mask)
    assert states.shape == (1, c.converter.video_tokens + ids.shape[1], c.converter.hidden)
    sampler = dataclasses.replace(c.sampler, steps=2)
    shape = (c.audio.n_codebooks, c.audio.audio_seq_len)
    tokens = maskgit.generate(
        lambda x: nets.audio(x, states, mask),
        shape,
        nets.audio.mask_id,
        maskgit.generators_for([7]),
        sampler,
    )
    assert tokens.shape == (1, *shape) and 0 <= tokens.min() and tokens.max() < c.audio.num_tokens
    wav = nets.encodec.decode(tokens)
    assert wav.shape == (1, 1, round(c.window * c.encodec.sample_rate))
    assert torch.isfinite(wav).all() and wav.abs().max() > 0
    again = maskgit.generate(
        lambda x: nets.audio(x, states, mask),
        shape,
        nets.audio.mask_id,
        maskgit.generators_for([7]),
        sampler,
    )
    assert torch.equal(tokens, again)
