"""Official checkpoint files, read from disk as published: tiny networks saved in each file format
and wrapper the official files use, put where `runtime/weights.py` looks for them under a
temporary $SELVA_RT_HOME, then loaded by `Pipeline.from_pretrained` and `selva-rt generate` /
`separate`. The files hold the random `tiny*` weights, so a correct load must give exactly the
`tiny*` variant's output.

Formats (spec ARCHITECTURE.md §7): a plain `torch.save` state dict (generator, VAE, CLIP's
open_clip .bin), the same with keys the official loaders drop (the generator's old non-persistent
buffers; the Synchformer file's audio branch), BigVGAN's nested `{"generator": state}` in the
legacy weight_g/weight_v layout and the parametrized one, Flowley's `model.` prefixed state with
its tied block stored once per application, and a Flan-T5 hub folder. Every `.pth`/`.pt` is read
with `torch.load(weights_only=True)`: a pickle that would run code is refused, in one line."""

import dataclasses
import json

import numpy as np
import pytest
import soundfile
import torch
import transformers
from selva_rt.runtime import cli, weights
from selva_rt.runtime.errors import CheckpointError
from selva_rt.runtime.models import clip as clip_mod
from selva_rt.runtime.models import flowley as flowley_mod
from selva_rt.runtime.models import generator as gen_mod
from selva_rt.runtime.models import t5 as t5_mod
from selva_rt.runtime.models import vae as vae_mod
from selva_rt.runtime.models import video_encoder as venc_mod
from selva_rt.runtime.models import vocoder as voc_mod
from selva_rt.runtime.models.checkpoint import load_object
from selva_rt.runtime.models.networks import TINY_SEEDS
from selva_rt.runtime.pipeline import Pipeline
from selva_rt.runtime.variants import TINY, TINY_FLOWLEY, TINY_SEP, VARIANTS, Variant

torch.set_num_threads(2)

# The tiny networks with the file layout of a published variant.
LAYOUTS = {
    "tiny-as-selva": (TINY, "selva-small-16k"),
    "tiny-sep-as-mmaudiosep": (TINY_SEP, "mmaudiosep-small-16k"),
    "tiny-flowley-as-flowley": (TINY_FLOWLEY, "flowley"),
}
RUN = ["--precision", "fp32", "--steps", "2", "--duration", "1", "--seed", "3", "--quiet"]


def official(name: str) -> Variant:
    tiny, published = LAYOUTS[name]
    return dataclasses.replace(
        tiny, name=name, random_weights=False, files=VARIANTS[published].files
    )


class RunsCode:
    """A pickled object whose loading would run code (it would write `marker`)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def save(state: dict, path, entry: str | None = None) -> None:
    """torch.save as the official training code does (each tensor its own storage); `entry`:
    nested as BigVGAN's training saves it, beside the step count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.clone() for k, v in state.items()}
    torch.save({entry: state, "steps": 2_500_000} if entry else state, path)


def parametrized(state: dict) -> dict:
    """BigVGAN's weight_g/weight_v keys in torch.nn.utils.parametrizations.weight_norm's names."""
    g, v = voc_mod.WEIGHT_NORM_LAYOUTS[0]
    pg, pv = voc_mod.WEIGHT_NORM_LAYOUTS[1]
    return {k.replace(g, pg).replace(v, pv): t for k, t in state.items()}


def write_t5_folder(config, folder) -> None:
    """A Flan-T5 hub folder: config.json, model.safetensors (T5EncoderModel.save_pretrained),
    the tokenizer files; spiece.model is published too but only tokenizer.json is read."""
    folder.mkdir(parents=True, exist_ok=True)
    model = transformers.T5EncoderModel(t5_mod.hf_config(config))
    model.load_state_dict(t5_mod.random_official_state(config, t5_mod.TINY_SEED))
    model.save_pretrained(folder)
    t5_mod.tiny_tokenizer(config).save_pretrained(folder)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if not (folder / name).is_file():  # newer transformers fold it into tokenizer_config
            (folder / name).write_text("{}")
    (folder / "spiece.model").write_bytes(b"unused: tokenizer.json is the tokenizer")


def write_files(variant: Variant, vocoder_layout: str = "legacy") -> dict[str, object]:
    """Every file of `variant` at its place under the weights home; returns role -> path."""
    paths = {f.role: weights.local_path(f) for f in variant.files}
    family = flowley_mod if variant.flowley else gen_mod
    generator = family.random_official_state(variant.generator, TINY_SEEDS["generator"])
    if not variant.flowley:
        # Older generator files also saved these non-persistent buffers (MMAudio.load_weights
        # deletes them).
        generator |= {"t_embed.freqs": torch.ones(8), "latent_rot": torch.ones(1, 4, 2, 2)}
    save(generator, paths["generator"])
    if variant.video_encoder is not None:
        encoder = venc_mod.random_official_state(variant.video_encoder, TINY_SEEDS["video_encoder"])
        role = "video_encoder" if variant.selective else "synchformer"
        # Synchformer's file also holds the audio branch; the official loader keeps the prefixes.
        save(
            encoder | {"afeat_extractor.patch_embed.proj.weight": torch.ones(4, 1, 2, 2)},
            paths[role],
        )
    save(vae_mod.random_official_state(variant.vae, TINY_SEEDS["vae"]), paths["vae"])
    vocoder = voc_mod.random_official_state(variant.vocoder, TINY_SEEDS["vocoder"])
    if vocoder_layout == "parametrized":
        vocoder = parametrized(vocoder)
    save(vocoder, paths["vocoder"], entry="generator")
    save(clip_mod.random_official_state(variant.clip, TINY_SEEDS["clip"]), paths["clip"])
    if variant.t5 is not None:
        write_t5_folder(variant.t5, paths["t5"].parent)
    assert not weights.missing_files(variant)
    return paths


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SELVA_RT_HOME", str(tmp_path / "home"))
    for name in LAYOUTS:
        monkeypatch.setitem(VARIANTS, name, official(name))
    return tmp_path / "home"


def stem_of(out) -> np.ndarray:
    report = json.loads(out)
    (entry,) = report["outputs"]
    return soundfile.read(entry["audio"], dtype="float32")[0]


def assert_same_weights(ours: Pipeline, tiny: Pipeline) -> None:
    """Every network holds exactly the random variant's tensors, and the tokenizers agree."""
    for role, net in vars(tiny.parts.nets).items():
        if isinstance(net, torch.nn.Module):
            a, b = getattr(ours.parts.nets, role).state_dict(), net.state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), role
    if tiny.parts.nets.t5 is not None:
        a, b = ours.parts.nets.t5.model.state_dict(), tiny.parts.nets.t5.model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        prompts = ["dog barking", "rain on a tin roof, thunder!"]
        ids, mask = ours.family.tokenizers.t5(prompts)
        tiny_ids, tiny_mask = tiny.family.tokenizers.t5(prompts)
        assert torch.equal(ids, tiny_ids) and torch.equal(mask, tiny_mask)


@pytest.mark.parametrize("vocoder_layout", ["legacy", "parametrized"])
def test_selva_files_load_as_the_tiny_weights(home, vocoder_layout):
    write_files(VARIANTS["tiny-as-selva"], vocoder_layout)
    assert_same_weights(
        Pipeline.from_pretrained("tiny-as-selva", device="cpu", precision="fp32"),
        Pipeline.from_pretrained("tiny", device="cpu", precision="fp32"),
    )


def test_flowley_files_load_as_the_tiny_weights(home):
    write_files(VARIANTS["tiny-flowley-as-flowley"])
    assert_same_weights(
        Pipeline.from_pretrained("tiny-flowley-as-flowley", device="cpu", precision="fp32"),
        Pipeline.from_pretrained("tiny-flowley", device="cpu", precision="fp32"),
    )


def test_cli_generate_reads_the_files(home, sample_clip, tmp_path, capsys):
    write_files(VARIANTS["tiny-as-selva"])
    argv = ["generate", str(sample_clip), "rain", *RUN, "--no-video", "--json"]
    assert cli.main([*argv, "--variant", "tiny-as-selva", "--out", str(tmp_path / "a")]) == 0
    ours = stem_of(capsys.readouterr().out)
    assert cli.main([*argv, "--variant", "tiny", "--out", str(tmp_path / "b")]) == 0
    np.testing.assert_array_equal(ours, stem_of(capsys.readouterr().out))


def test_separate_with_checkpoint_file_kept_elsewhere(home, sample_clip, tmp_path, capsys):
    """MMAudioSep's generator is unpublished: `--checkpoint FILE` names it wherever it is; the
    shared MMAudio files (Synchformer with its audio branch, VAE with its encoder, BigVGAN,
    open_clip with both towers) come from the weights home."""
    variant = VARIANTS["tiny-sep-as-mmaudiosep"]
    paths = write_files(variant)
    elsewhere = tmp_path / "downloads" / "my_mmaudiosep.pth"
    elsewhere.parent.mkdir()
    paths["generator"].rename(elsewhere)
    argv = ["separate", str(sample_clip), "dog barking", *RUN, "--no-video", "--json"]
    out = ["--out", str(tmp_path / "a")]
    assert cli.main([*argv, "--variant", variant.name, *out]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(paths["generator"]) in err and "--checkpoint" in err
    assert cli.main([*argv, "--variant", variant.name, "--checkpoint", str(elsewhere), *out]) == 0
    ours = stem_of(capsys.readouterr().out)
    assert cli.main([*argv, "--variant", "tiny-sep", "--out", str(tmp_path / "b")]) == 0
    np.testing.assert_array_equal(ours, stem_of(capsys.readouterr().out))


def broken_files(paths: dict, tmp_path) -> dict:
    """role -> (how the file is broken, what the one-line error must say)."""
    generator = paths["generator"]
    data = generator.read_bytes()
    return {
        "truncated": (
            lambda: generator.write_bytes(data[: len(data) // 2]),
            "cannot read checkpoint",
        ),
        "not a checkpoint": (
            lambda: generator.write_text("<html>404</html>"),
            "cannot read checkpoint",
        ),
        "another network's file": (
            lambda: generator.write_bytes(paths["vae"].read_bytes()),
            "does not match Generator",
        ),
        "one tensor misshaped": (
            lambda: torch.save(
                torch.load(generator) | {"final_layer.conv.bias": torch.zeros(3)}, generator
            ),
            "misshaped",
        ),
        "pickled code": (
            lambda: torch.save({"x": RunsCode(str(tmp_path / "ran"))}, generator),
            "cannot read checkpoint",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "truncated",
        "not a checkpoint",
        "another network's file",
        "one tensor misshaped",
        "pickled code",
    ],
)
def test_bad_files_are_one_line_errors_naming_the_file(home, sample_clip, tmp_path, capsys, case):
    paths = write_files(VARIANTS["tiny-as-selva"])
    original = paths["generator"].read_bytes()
    assert "final_layer.conv.bias" in torch.load(paths["generator"])
    break_it, message = broken_files(paths, tmp_path)[case]
    break_it()
    assert paths["generator"].read_bytes() != original
    with pytest.raises(CheckpointError) as err:
        Pipeline.from_pretrained("tiny-as-selva", device="cpu", precision="fp32")
    assert message in str(err.value) and str(paths["generator"]) in str(err.value)
    out = tmp_path / "out"
    argv = ["generate", str(sample_clip), "rain", "--variant", "tiny-as-selva", *RUN]
    capsys.readouterr()
    assert cli.main([*argv, "--out", str(out)]) == 1
    stderr = capsys.readouterr().err
    assert stderr == f"selva-rt: error: {err.value}\n" and "Traceback" not in stderr
    assert not out.exists() or not any(out.iterdir())
    assert not (tmp_path / "ran").exists(), "loading a checkpoint ran pickled code"


def test_weights_only_refuses_what_a_plain_pickle_would_run(tmp_path):
    """The check above means something: the same file does run code through pickle."""
    path = tmp_path / "evil.pth"
    torch.save({"x": RunsCode(str(tmp_path / "ran"))}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_object(path)
    assert not (tmp_path / "ran").exists()
    torch.load(path, weights_only=False)
    assert (tmp_path / "ran").exists()
