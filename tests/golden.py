"""Access to the reference data the suite carries in tests/data: the golden cases made by the
official code (`golden/`, its README gives tolerances and quirks) and the layouts of the official
checkpoints (`manifests/`).

Every test derives configurations, shapes and lengths from a case's json and tensors, so any
other set made the same way (pointed to by SELVA_RT_GOLDEN, and SELVA_RT_MANIFESTS for the
layouts) is checked without code changes. Missing data fails the test that needs it, never skips.
"""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

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


SEQ_KWARGS = ("latent_seq_len", "clip_seq_len", "sync_seq_len")


def generator_config(kwargs: dict, separation: bool = False):
    """GeneratorConfig + (latent, clip, sync) lengths from official `MMAudio(**kwargs)`, or
    `MMAudioSep(**kwargs)` with `separation` (same kwargs; the input conv reads 2C channels)."""
    import dataclasses

    from selva_rt.runtime.variants import GeneratorConfig

    fields = {f.name for f in dataclasses.fields(GeneratorConfig)} - {"mixture_dim"}
    assert set(kwargs) == fields | set(SEQ_KWARGS), "unmapped constructor kwargs"
    config = GeneratorConfig(
        **{k: kwargs[k] for k in fields},
        mixture_dim=kwargs["latent_dim"] if separation else 0,
    )
    return config, tuple(kwargs[k] for k in SEQ_KWARGS)


def video_encoder_config(kwargs: dict, vit_overrides: dict):
    """VideoEncoderConfig from official `TextSynch(**kwargs)` + the MotionFormer yaml overrides."""
    from selva_rt.runtime.variants import VideoEncoderConfig

    return VideoEncoderConfig(
        embed_dim=vit_overrides["VIT.EMBED_DIM"],
        depth=vit_overrides["VIT.DEPTH"],
        num_heads=vit_overrides["VIT.NUM_HEADS"],
        text_dim=kwargs["text_dim"],
        num_sup_tokens=kwargs["num_sup_text_tokens"],
        xattn_depth=kwargs["xattn_depth"],
    )
