"""Fixtures shared by several test modules: the sample clip, the tiny variant's networks and its
ONNX build, the golden `e2e_tiny` case and a Pipeline over its golden-weight networks, with the
sizes, duration and settings the case records."""

import selva_rt  # noqa: F401, I001  (first: it takes the checkout's folders off sys.path)
import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# Triton runs a whole process either compiled or interpreted (kernels/jit.py). Without a GPU the
# kernel tests interpret it on the CPU: set before the imports below bring Triton in.
os.environ.setdefault("TRITON_INTERPRET", "0" if torch.cuda.is_available() else "1")
# Commands keep video and text features (and low-memory weights) under $SELVA_RT_HOME: a test run
# without one set keeps them in a folder of its own, which its subprocesses inherit.
os.environ.setdefault("SELVA_RT_HOME", tempfile.mkdtemp(prefix="selva-rt-tests-"))

from golden import (
    ERRORS,
    GOLDEN,
    audio_config,
    case_path,
    check_seq_cfg,
    generator_config,
    golden_file,
    load_case,
    recorded,
    sync_frames_from_u8,
    video_encoder_config,
)
from selva_rt.export import build_engines
from selva_rt.runtime import media
from selva_rt.runtime.backends.torch_parts import TorchParts
from selva_rt.runtime.families import family_of
from selva_rt.runtime.families.flow import TextFeatures
from selva_rt.runtime.models.checkpoint import read_state_dict
from selva_rt.runtime.models.generator import Generator
from selva_rt.runtime.models.networks import Networks, build_networks
from selva_rt.runtime.models.vae import VAE
from selva_rt.runtime.models.video_encoder import VideoEncoder
from selva_rt.runtime.models.vocoder import BigVGAN, vocoder_config_from_hparams
from selva_rt.runtime.pipeline import Pipeline
from selva_rt.runtime.variants import SYNC_FPS, TINY, VAEConfig


def pytest_terminal_summary(terminalreporter):
    if ERRORS:
        terminalreporter.section(f"golden ({GOLDEN}): worst relative L2 error per output")
        for name in sorted(ERRORS):
            terminalreporter.write_line(f"{name:48s} {ERRORS[name]:.3e}")


@pytest.fixture(scope="session")
def sample_clip() -> Path:
    """The demo clip shipped with the package (runtime/assets/sample.mp4)."""
    return Path(media.__file__).parents[1] / "assets" / "sample.mp4"


@pytest.fixture(scope="module")
def tiny_nets() -> Networks:
    """The tiny variant's random networks, one set per module (tests may move or resize them)."""
    return build_networks(TINY, {})


@pytest.fixture(scope="session")
def tiny_engines(tmp_path_factory) -> Path:
    """One fp32 ONNX build of every tiny part per session (the export and ORT backend tests)."""
    out = tmp_path_factory.mktemp("engines") / "tiny"
    argv = ["--variant", "tiny", "--out", str(out), "--onnx-only", "--threads", "2", "--quiet"]
    assert build_engines.main(argv) == 0
    return out


@dataclasses.dataclass
class E2ECase:
    """The golden `e2e_tiny` case: json, tensors, its duration (the json's exact number; the
    tensor holds it in float32), sync frames [1, T, 3, 224, 224] and text features."""

    meta: dict
    tensors: dict[str, torch.Tensor]
    duration: float
    frames: torch.Tensor
    text: TextFeatures


@pytest.fixture(scope="session")
def e2e() -> E2ECase:
    meta, tensors = load_case("e2e_tiny")
    duration = recorded(meta["args"]["duration"], tensors["in.duration"], "e2e_tiny duration")
    # "official load_video(preproc_video.mp4, 2.0)...": the first frames of that video's case.
    source = re.search(r"load_video\((\w+)\.mp4", meta["inputs"]["in.sync_video"]).group(1)
    u8 = load_case(source)[1]["out.sync_frames_u8"]
    count = int(SYNC_FPS * duration)  # the official load_video's sync frame count
    assert len(u8) >= count, f"{source} holds {len(u8)} frames, e2e_tiny needs {count}"
    text = TextFeatures(
        clip=tensors["in.text_clip_f"],
        negative=tensors["in.neg_text_clip_f"],
        t5=tensors["in.text_t5_f"],
        t5_mask=tensors["in.text_t5_mask"],
    )
    return E2ECase(meta, tensors, duration, sync_frames_from_u8(u8[:count])[None], text)


def weights_case(meta: dict, role: str) -> str:
    """`"gen_small_v1.safetensors (state.*)"` -> `"gen_small_v1"`."""
    return meta["weights"][role].split(".safetensors")[0]


@pytest.fixture(scope="session")
def golden_pipeline(e2e) -> Callable[[bool], Pipeline]:
    """`golden_pipeline(reference)`: a Pipeline over the networks of e2e_tiny, each loaded from
    its golden weights file with the configuration its json records, through the same loaders
    real checkpoints use; fresh networks on each call."""
    meta = e2e.meta
    cons = meta["constructors"]
    gen_config, lengths = generator_config(cons["generator"]["kwargs"])
    venc = cons["video_enc"]
    voc_meta = json.loads(golden_file(f"{weights_case(meta, 'vocoder')}.json").read_text())
    vae_config = VAEConfig(**cons["vae"]["kwargs"])
    variant = dataclasses.replace(
        TINY,
        name="golden e2e_tiny",
        audio=audio_config(vae_config.data_dim),
        generator=gen_config,
        video_encoder=video_encoder_config(venc["kwargs"], venc["motionformer_overrides"]),
        vae=vae_config,
        vocoder=vocoder_config_from_hparams(voc_meta["config"], "bigvgan golden"),
    )
    check_seq_cfg(variant.sequence_lengths(e2e.duration), meta["seq_cfg"])

    def make(reference: bool = False) -> Pipeline:
        with torch.device("meta"):
            nets = Networks(
                generator=Generator(gen_config, *lengths),
                video_encoder=VideoEncoder(variant.video_encoder),
                vae=VAE(vae_config),
                vocoder=BigVGAN(variant.vocoder),
                clip_text=None,  # the case gives CLIP text features
            )
        for role, net in (
            ("generator", nets.generator),
            ("video_enc", nets.video_encoder),
            ("vae", nets.vae),
            ("vocoder", nets.vocoder),
        ):
            case = weights_case(meta, role)
            state = read_state_dict(case_path(case), prefix="state.")
            if role == "vae":  # the golden VAE file also holds constants only the decoder uses
                state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
            net.load_official(state, case)
        parts = TorchParts(variant, nets, torch.device("cpu"), torch.float32, reference=reference)
        return Pipeline(family_of(variant, parts))

    return make
