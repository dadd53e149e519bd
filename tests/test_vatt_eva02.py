"""The eva02 image tower and its preprocessing against the golden `vatt_eva02_small` case (open_clip
EVA02-L-14-336 eval transform and `encode_image(normalize=False)`), and the 5 fps frame rule."""

import re
from fractions import Fraction

import pytest
import torch
from golden import assert_close
from selva_rt.runtime.errors import CheckpointError
from selva_rt.runtime.models.eva02 import (
    Eva02Vision,
    frame_times,
    pick_frames,
    pil_bicubic_resize,
    preprocess,
    random_official_state,
)
from vatt_cases import eva02_config, eva02_network

CASE = "vatt_eva02_small"


@pytest.fixture(scope="module")
def case():
    return eva02_network(CASE)


@pytest.fixture(scope="module")
def pixels(case):
    meta, t, _ = case
    return preprocess(t["in.frames_u8"], eva02_config(meta))


def test_preprocessing_matches_open_clip(case, pixels):
    """PIL bicubic resize (re-implemented), centre crop, /255, OpenAI mean/std."""
    meta, t, _ = case
    assert_close(f"{CASE}.pixel_mean", pixels.mean((2, 3)), t["out.pixel_mean"], 1e-6, 1e-5)
    assert_close(f"{CASE}.pixel_std", pixels.std((2, 3)), t["out.pixel_std"], 1e-6, 1e-5)
    crop = t["out.pixel_frame0_crop"]
    # "preprocessed frame 0, rows/cols 150..181"
    first = int(re.search(r"rows/cols (\d+)\.\.", meta["outputs"]["out.pixel_frame0_crop"])[1])
    rows = slice(first, first + crop.shape[1])
    cols = slice(first, first + crop.shape[2])
    assert_close(f"{CASE}.pixel_frame0_crop", pixels[0, :, rows, cols], crop, 1e-6, 1e-5)


@torch.no_grad()
def test_features_match_open_clip(case, pixels):
    meta, t, net = case
    assert_close(f"{CASE}.features", net(pixels), t["out.features"], 1e-4, 1e-3)


def test_frame_rule(case):
    """The chosen 5 fps rule gives the case's (assumed) source frames floor(i * fps / 5)."""
    meta, t, _ = case
    k = meta["constructor_kwargs"]
    fps, count = k["src_fps"], k["n_frames"]
    pts = [Fraction(i, fps) for i in range(fps * count // 5 + fps)]
    assert pick_frames(pts, frame_times(0.0, count, 5)) == t["in.frame_index"].tolist()
    # A later window and a 29.97 fps source: the last frame at or before each time.
    ntsc = [Fraction(1001 * i, 30000) for i in range(700)]
    picked = pick_frames(ntsc, frame_times(12.0, 50, 5))
    times = frame_times(12.0, 50, 5)
    assert all(ntsc[j] <= s < ntsc[j + 1] for j, s in zip(picked, times, strict=True))


def test_pil_resize_properties():
    """Constant images stay constant (Pillow normalises its taps), an unchanged size is the
    identity, and up/down sizes are exact."""
    flat = torch.full((3, 17, 23), 200, dtype=torch.uint8)
    assert bool((pil_bicubic_resize(flat, (40, 9)) == 200).all())
    img = torch.randint(0, 256, (3, 17, 23), dtype=torch.uint8)
    assert torch.equal(pil_bicubic_resize(img, (17, 23)), img)
    assert pil_bicubic_resize(img, (5, 70)).shape == (3, 5, 70)


def test_loading(case):
    meta, t, _ = case
    config = eva02_config(meta)
    with torch.device("meta"):
        Eva02Vision(config).load_official(
            {**random_official_state(config, 0), "text.token_embedding.weight": torch.zeros(2, 2)},
            "random",
        )
    with torch.device("meta"), pytest.raises(CheckpointError, match="has no visual.trunk") as err:
        Eva02Vision(config).load_official({"visual.conv1.weight": torch.zeros(1)}, "vit.bin")
    assert "\n" not in str(err.value)
