"""Access to the golden reference cases made by the official code (`../shared/golden`).

Every test derives configurations, shapes and lengths from a case's json and tensors, so any
other set made the same way (pointed to by SELVA_RT_GOLDEN) is checked without code changes.
"""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

GOLDEN = Path(
    os.environ.get("SELVA_RT_GOLDEN", Path(__file__).parents[1] / ".." / "shared" / "golden")
)

# Worst relative L2 error seen per case/output in this run; printed by conftest at the end.
ERRORS: dict[str, float] = {}


def case_path(name: str) -> Path:
    path = GOLDEN / f"{name}.safetensors"
    if not path.is_file():
        pytest.skip(f"golden case {name} not found under {GOLDEN} (set SELVA_RT_GOLDEN)")
    return path


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
