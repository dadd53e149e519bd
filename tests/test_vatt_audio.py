"""VATT Audio (VT2AModel) against the golden `vatt_audio_small` case: one MaskGIT network step,
every intermediate the case records, and the layouts of the official files."""

import pytest
import torch
from golden import assert_close, load_case
from selva_rt.runtime.errors import CheckpointError
from selva_rt.runtime.models.vatt_audio import (
    VattAudio,
    alibi_slopes,
    official_shapes,
    random_official_state,
    sincos_positions,
)
from selva_rt.runtime.models.vatt_networks import read_codebooks, read_lightning
from vatt_cases import audio_config, audio_network, state

CASE = "vatt_audio_small"


@pytest.fixture(scope="module")
def case():
    meta, net = audio_network(CASE)
    return meta, load_case(CASE)[1], net


@torch.no_grad()
def test_step_matches_official(case):
    """Input assembly, every encoder/decoder sub-layer and the heads, cond and uncond rows."""
    meta, t, net = case
    trace: dict = {}
    cond, uncond = net(t["in.tokens"], t["in.cond"], t["in.pad_mask"], trace=trace)
    b = t["in.cond"].shape[0]
    v, null = net.condition_rows(t["in.cond"])
    assert_close(f"{CASE}.cond_emb", v, t["out.cond_emb"], 1e-5, 1e-4)
    assert_close(f"{CASE}.null_cond_emb", null, t["out.null_cond_emb"], 1e-5, 1e-4)
    latent = net.token_latents(t["in.tokens"])
    assert_close(f"{CASE}.audio_latent_sum", latent, t["out.audio_latent_sum"], 1e-5, 1e-4)
    emb = net.latent_proj(latent)
    assert_close(f"{CASE}.audio_emb", emb, t["out.audio_emb"], 1e-5, 1e-4)
    assert_close(f"{CASE}.enc_input", trace["enc_input"], t["out.enc_input"], 1e-5, 1e-4)
    assert trace["enc_input"].shape[0] == 2 * b
    for name, layers in (("enc", trace["enc_layers"]), ("dec", trace["dec_layers"])):
        expected = sorted(
            (int(k.rsplit(".", 1)[1]), k) for k in t if k.startswith(f"out.{name}_layer_in.")
        )
        assert [i for i, _ in expected] == list(range(1, len(layers) + 1))
        for i, key in expected:
            assert_close(f"{CASE}.{name}_layer_in.{i}", layers[i - 1], t[key], 1e-4, 2e-3)
    assert_close(f"{CASE}.enc_out", trace["enc_out"], t["out.enc_out"], 1e-4, 2e-3)
    assert_close(f"{CASE}.dec_out", trace["dec_out"], t["out.dec_out"], 1e-4, 2e-3)
    assert_close(f"{CASE}.logits_cond", cond, t["out.logits_cond"], 1e-4, 2e-3)
    assert_close(f"{CASE}.logits_uncond", uncond, t["out.logits_uncond"], 1e-4, 2e-3)


def test_constants_match_official(case):
    meta, t, _ = case
    c = audio_config(meta)
    assert alibi_slopes(c.num_heads) == meta["derived"]["alibi_slopes_encoder"]
    assert alibi_slopes(c.dec_num_heads) == meta["derived"]["alibi_slopes_decoder"]
    assert alibi_slopes(3) == [2**-4, 2**-8, 2**-2]  # not a power of two (golden README)
    # The frozen sincos table (stored in checkpoints; made here only for random weights).
    pos = state(t)["pos_embed"]
    assert_close(f"{CASE}.pos_embed", sincos_positions(c.dim, pos.shape[1]), pos, 1e-5, 1e-4)


@torch.no_grad()
def test_padding_and_mask_tokens_matter(case):
    """The discriminative checks of the case: padded condition rows do not leak, the pad mask
    and the MASK embeddings are used."""
    meta, t, net = case
    cond, _ = net(t["in.tokens"], t["in.cond"], t["in.pad_mask"])
    changed = t["in.cond"].clone()
    changed[t["in.pad_mask"] == 0] += 3.0
    assert torch.equal(net(t["in.tokens"], changed, t["in.pad_mask"])[0], cond)
    ones = net(t["in.tokens"], t["in.cond"], torch.ones_like(t["in.pad_mask"]))[0]
    change = ((ones - cond).norm() / cond.norm()).item()
    assert change == pytest.approx(
        meta["discriminative"]["ignore_pad_mask_rel_change_logits_cond"], rel=0.01
    )


def test_official_layout_and_random_weights(case):
    meta, t, _ = case
    c = audio_config(meta)
    assert official_shapes(c) == {k: tuple(v.shape) for k, v in state(t).items()}
    weights, codebooks = random_official_state(c, 0)
    with torch.device("meta"):
        VattAudio(c).load_official(weights, codebooks, "random")


def test_shared_norm_copies_must_agree(case):
    meta, t, _ = case
    weights = state(t)
    key = "encoder.attn_layers.layers.1.0.0.B.weight"
    weights[key] = weights[key] + 1
    with torch.device("meta"), pytest.raises(CheckpointError, match=key):
        VattAudio(audio_config(meta)).load_official(
            weights, t["file.meta_pretrain_vgg_encodec_embed"], "x"
        )


@pytest.mark.parametrize("with_llm", [False, True])
@pytest.mark.parametrize("codebook_layout", ["tensor", "list"])
def test_lightning_checkpoint_and_codebook_file(case, tmp_path, with_llm, codebook_layout):
    """The unverified layouts of VATT.md §3: the Lightning `.ckpt` (`state_dict`, VT2AModel keys
    under `audio_token_decoder.`, with or without the frozen LLM under `encoder.`) and the
    codebook file as one [K, V, latent] tensor or a list of K tables."""
    meta, t, net = case
    books = t["file.meta_pretrain_vgg_encodec_embed"]
    sd = {f"audio_token_decoder.{k}": v for k, v in state(t).items()}
    if with_llm:
        sd["encoder.base_model.model.model.norm.weight"] = torch.ones(4)
    ckpt = tmp_path / "vatt.ckpt"
    torch.save({"epoch": 3, "global_step": 10, "state_dict": sd, "loops": {}}, ckpt)
    books_file = tmp_path / "codebooks.pt"
    torch.save(books if codebook_layout == "tensor" else list(books), books_file)
    audio, llm = read_lightning(ckpt)
    assert bool(llm) == with_llm
    with torch.device("meta"):
        loaded = VattAudio(audio_config(meta)).load_official(
            audio, read_codebooks(books_file), str(ckpt)
        )
    with torch.no_grad():
        a = loaded(t["in.tokens"], t["in.cond"], t["in.pad_mask"])[0]
        assert torch.equal(a, net(t["in.tokens"], t["in.cond"], t["in.pad_mask"])[0])


def test_refuses_foreign_and_truncated_files(case, tmp_path):
    meta, t, _ = case
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"model.net.weight": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match=r"not a VATT checkpoint.*model\.net\.weight") as err:
        read_lightning(foreign)
    assert "\n" not in str(err.value)
    weights = state(t)
    del weights["classifier.3.weight"]
    with (
        torch.device("meta"),
        pytest.raises(CheckpointError, match=r"missing: classifier\.3\.weight"),
    ):
        VattAudio(audio_config(meta)).load_official(
            weights, t["file.meta_pretrain_vgg_encodec_embed"], "x"
        )
    books = tmp_path / "books.pt"
    torch.save({"codebooks": torch.zeros(4, 8, 2)}, books)
    with pytest.raises(CheckpointError, match="is not a codebook file"):
        read_codebooks(books)
