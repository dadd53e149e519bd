"""Access to the reference data the suite carries in tests/data: the golden cases made by the
official code (`golden/`, its README gives tolerances and quirks) and the layouts of the official
checkpoints (`manifests/`).

Every test derives configurations, shapes and lengths from a case's json and tensors, so any
other set made the same way (pointed to by SELVA_RT_GOLDEN, and SELVA_RT_MANIFESTS for the
layouts) is checked without code changes. Missing data fails the test that needs it, never skips.
"""

import ast
import dataclasses
import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from selva_rt.benchmarks.golden_e2e import (  # noqa: F401 (the suite reads them from here)
    audio_config,
    generator_config,
    video_encoder_config,
)

DATA = Path(__file__).parent / "data"
GOLDEN = Path(os.environ.get("SELVA_RT_GOLDEN") or DATA / "golden")
MANIFESTS = Path(os.environ.get("SELVA_RT_MANIFESTS") or DATA / "manifests")

# Worst relative L2 error seen per case/output in this run; printed by conftest at the end.
ERRORS: dict[str, float] = {}


def golden_file(name: str) -> Path:
    """A file of the golden set (`e2e_tiny.json`, `preproc_video.mp4`, ...)."""
    path = GOLDEN / name
    if not path.is_file():
        pytest.fail(
            f"golden file {name} not found in {GOLDEN} (set SELVA_RT_GOLDEN)", pytrace=False
        )
    return path


def case_path(name: str) -> Path:
    return golden_file(f"{name}.safetensors")


def manifest(name: str) -> dict:
    """A layout manifest (`mmaudio_small_16k`, `reference_tables`, ...)."""
    path = MANIFESTS / f"{name}.json"
    if not path.is_file():
        pytest.fail(
            f"manifest {path.name} not found in {MANIFESTS} (set SELVA_RT_MANIFESTS)", pytrace=False
        )
    return json.loads(path.read_text())


def load_case(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(json sidecar, all tensors) of a golden case."""
    path = case_path(name)
    meta = json.loads(path.with_suffix(".json").read_text())
    return meta, load_file(str(path))


def recorded(value: float, stored: torch.Tensor, what: str) -> float:
    """A number the json records exactly (a duration: 1.6) that a tensor stores too, at its own
    precision (float32 holds 1.6 as 1.6000000238): checks they agree and returns the json's, the
    number the official call was given."""
    assert torch.tensor(value, dtype=stored.dtype) == stored, f"{what}: {value} != {stored}"
    return value


def setting(text: str, key: str):
    """The value of `key=...` in a string the json records: `setting("VAE(data_dim=80,
    hidden_dim=8)", "hidden_dim")` -> 8, `setting("Euler 25 steps CFG 4.5", "CFG")` -> 4.5
    (`key VALUE` also reads)."""
    found = re.search(rf"\b{re.escape(key)}(?:=|\s+)([\w.'\"+-]+)", text)
    assert found, f"{key} not recorded in {text!r}"
    return ast.literal_eval(found.group(1))


def golden_video(text: str) -> Path:
    """The video file a json string names (`"load_video(preproc_video.mp4, 2.0)"`)."""
    found = re.search(r"[\w.-]+\.mp4", text)
    assert found, f"no video file named in {text!r}"
    return golden_file(found.group(0))


def stored_frames(text: str) -> list[torch.Tensor]:
    """uint8 frames a json string points to: `"<case>.safetensors:<key>[a:b]"`, or several
    items `"...[[a:b],[c:d]]"` (one tensor each)."""
    found = re.search(r"(\w+)\.safetensors:([\w.]+)\[([\d:,\[\]]+)\]", text)
    assert found, f"no stored frames named in {text!r}"
    case, key, ranges = found.groups()
    frames = load_case(case)[1][key]
    items = [(int(a), int(b)) for a, b in re.findall(r"(\d+):(\d+)", ranges)]
    assert all(b <= len(frames) for _, b in items), f"{text!r}: {case} holds {len(frames)} frames"
    return [frames[a:b] for a, b in items]


def sync_frames_from_u8(u8: torch.Tensor) -> torch.Tensor:
    """The official sync transform of stored uint8 frames: (u8 / 255 - 0.5) / 0.5, bit-exact."""
    return (u8.float() * (1 / 255) - 0.5) / 0.5


def assert_close(
    name: str, actual: torch.Tensor, expected: torch.Tensor, rtol: float, maxabs: float
) -> float:
    """Relative L2 error ||a - b|| / ||b|| <= rtol and max |a - b| <= maxabs; returns the error."""
    assert actual.shape == expected.shape, (
        f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    )
    a, b = actual.detach().double().cpu(), expected.double()
    assert torch.isfinite(a).all(), f"{name}: non-finite values"
    rel = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
    mx = (a - b).abs().max().item()
    ERRORS[name] = max(ERRORS.get(name, 0.0), rel)
    assert rel <= rtol and mx <= maxabs, (
        f"{name}: rel L2 {rel:.3g} (<= {rtol}), max abs {mx:.3g} (<= {maxabs})"
    )
    return rel


def flowley_config(kwargs: dict):
    """FlowleyConfig, La, Lv from the official `Flowley(**kwargs)`; every kwarg that changes the
    inference math must be one this runtime implements."""
    from selva_rt.runtime.variants import FlowleyConfig

    assert kwargs["single_type"] == "DiTV2" and kwargs["mask_fade"] is True
    assert kwargs["mask_fade_type"] == "cosine" and kwargs["qk_scale"] is None
    assert kwargs["balance_hparam"] is None  # a fixed α loads as the same key either way
    config = FlowleyConfig(
        latent_dim=kwargs["audio_dim"],
        text_dim=kwargs["text_dim"],
        video_dim=kwargs["video_dim"],
        hidden_dim=kwargs["hidden_dim"],
        text_seq_len=kwargs["text_seq_len"],
        video_fps=kwargs["video_fps"],
        multi_depth=kwargs["multi_n_layers"],
        multi_heads=kwargs["multi_n_heads"],
        single_depth=kwargs["single_n_layers"],
        single_heads=kwargs["single_n_heads"],
        mask_window=kwargs["mask_window_size"],
        mask_fade_range=kwargs["mask_fade_range"],
        mlp_ratio=kwargs["mlp_ratio"],
    )
    return config, kwargs["audio_seq_len"], kwargs["visual_seq_len"]


def vae_from_call(text: str):
    """VAEConfig from the VAE constructor a json string records (`"...VAE(data_dim=80, ...)"`)."""
    from selva_rt.runtime.variants import VAEConfig

    call = text[text.index("VAE(") :]
    return VAEConfig(**{f.name: setting(call, f.name) for f in dataclasses.fields(VAEConfig)})


def check_seq_cfg(seq, recorded: dict) -> None:
    """Our sequence lengths (variants.SequenceLengths) are those the case's seq_cfg records."""
    ours = {
        "latent_seq_len": seq.latent,
        "clip_seq_len": seq.clip,
        "sync_seq_len": seq.sync,
        "num_audio_frames": seq.audio_samples,
    }
    assert ours == {k: recorded[k] for k in ours}, f"{ours} != seq_cfg {recorded}"
