"""Another golden set: the cases the suite checks (VATT's aside), remade at other sizes, counts,
durations, batch sizes, seeds and prompts, with the official files' names, tensor names and
json fields, so that the golden tests can be pointed at it (SELVA_RT_GOLDEN).

    python tests/golden_resize.py OUT [--cases gen_small_v1,flowley_gen_small]

The official code is not here, so the outputs come from this project's own networks, run the
way the official calls the json names run. A set made this way shows one thing only: that the
golden tests take every size, count, duration and setting from the case, as they must to run
on any set the official code makes. It says nothing of the numerics (those are checked against
the official set), and it is never written into the suite's own golden folder.

`SIZES` holds what differs from the shared set, the kind of difference a held-out official set
has: batches of 1 and 3, 3 heads of 16, a single pre_only joint block, 4.0 s, 2.0 s and 1.6 s
clips (1.6 s as float32 where the official files store float32), another video file at another
frame rate and size, other Euler steps, CFG strengths, prompts and seeds. A case reads the cases
it depends on (`NEEDS`: e2e_tiny's weights are OUT's own unit cases) from OUT, never from the
shared set.
"""

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from selva_rt.kernels import psca_attention as psca
from selva_rt.runtime import media
from selva_rt.runtime.models import flowley as flowley_mod
from selva_rt.runtime.models import generator as gen_mod
from selva_rt.runtime.models import vae as vae_mod
from selva_rt.runtime.models import video_encoder as venc_mod
from selva_rt.runtime.models import vocoder as voc_mod
from selva_rt.runtime.models.clip import ClipImageEncoder
from selva_rt.runtime.models.clip import random_official_state as random_clip
from selva_rt.runtime.models.flowley import Flowley, FlowleyConditions, cat_conditions
from selva_rt.runtime.models.generator import Generator
from selva_rt.runtime.models.mel import MelConverter
from selva_rt.runtime.models.mixture import MixtureEncoder, sample_mixture
from selva_rt.runtime.models.vae import VAE
from selva_rt.runtime.models.video_encoder import VideoEncoder
from selva_rt.runtime.models.vocoder import BigVGAN, vocoder_config_from_hparams
from selva_rt.runtime.sampler import euler_loop, euler_sample
from selva_rt.runtime.variants import (
    AUDIO_16K,
    AUDIO_44K,
    ClipConfig,
    FlowleyConfig,
    GeneratorConfig,
    SequenceLengths,
    VAEConfig,
    VideoEncoderConfig,
    sequence_lengths,
)

SUITE_GOLDEN = Path(__file__).parent / "data" / "golden"
GEN_FIELDS = ("clip_f", "sync_f", "text_f", "clip_f_c", "text_f_c")

# What differs from the shared set, case by case.
SIZES = {
    "preproc_video": dict(size=(288, 160), fps=24, frames=60, duration=1.6),
    "gen_small_v1": dict(
        # sync_dim: textsynch_small's width (e2e_tiny joins them)
        kwargs=dict(latent_dim=20, clip_dim=40, sync_dim=48, text_dim=36, hidden_dim=48,
                    depth=3, fused_depth=1, num_heads=3, v2=False),
        duration=4.0, audio=AUDIO_16K, t=[0.2, 0.5, 0.9], t_scalar=0.4, cfg=3.5, steps=5,
        seeds=(1100, 1107),
    ),
    "gen_small_v2": dict(
        kwargs=dict(latent_dim=40, clip_dim=32, sync_dim=40, text_dim=24, hidden_dim=64,
                    depth=3, fused_depth=2, num_heads=4, v2=True),
        duration=1.6, audio=AUDIO_44K, t=[0.7], t_scalar=0.25, cfg=6.0, steps=6,
        seeds=(1200, 1207),
    ),
    "textsynch_small": dict(
        config=VideoEncoderConfig(embed_dim=48, depth=1, num_heads=3, text_dim=96,
                                  num_sup_tokens=3, xattn_depth=2),
        items=[(0, 32), (8, 40), (4, 36)], text_len=9, valid=[9, 5, 7], seeds=(3100, 3107),
    ),
    "vae_dec_16k": dict(kwargs=dict(data_dim=80, embed_dim=20, hidden_dim=12), z=(2, 20),
                        seeds=(4100, 4107)),
    "vae_dec_44k": dict(kwargs=dict(data_dim=128, embed_dim=40, hidden_dim=8), z=(1, 26),
                        seeds=(4200, 4207)),
    "bigvgan_16k": dict(upsample_initial_channel=64, mel=(2, 24), seeds=(5100, 5107)),
    "bigvgan_v2_44k": dict(upsample_initial_channel=128, mel=(1, 20), seeds=(6100, 6107)),
    "e2e_tiny": dict(duration=1.6, seed=7, cfg=3.0, steps=6, t5_len=6, seeds=(7100,)),
    "sep_gen_small_16k": dict(
        kwargs=dict(latent_dim=20, clip_dim=40, sync_dim=56, text_dim=36, hidden_dim=48,
                    depth=3, fused_depth=1, num_heads=3, v2=False),
        duration=4.0, audio=AUDIO_16K, t=[0.3, 0.6, 0.85], t_scalar=0.55, cfg=4.5, steps=4,
        seeds=(11100, 11107),
    ),
    "sep_gen_small_44k_v2": dict(
        kwargs=dict(latent_dim=40, clip_dim=24, sync_dim=40, text_dim=28, hidden_dim=32,
                    depth=2, fused_depth=1, num_heads=2, v2=True),
        duration=1.6, audio=AUDIO_44K, t=[0.1, 0.45, 0.8], t_scalar=0.3, cfg=2.5, steps=7,
        seeds=(12100, 12107),
    ),
    "mel_vae_enc_16k": dict(kwargs=dict(data_dim=80, embed_dim=20, hidden_dim=12), batch=2,
                            samples=25600, rng=1234, seeds=(13100, 13107)),
    "sep_e2e_tiny": dict(
        duration=1.6, seed=3, cfg=4.0, steps=5, prompt="a dog barking", negative_prompt="",
        net=dict(latent_dim=20, clip_dim=24, sync_dim=32, text_dim=32, hidden_dim=48, depth=2,
                 fused_depth=1, num_heads=3, v2=False),
        clip=dict(embed_dim=24, width=48, layers=1, head_width=16, patch_size=14),
        motionformer={"VIT.DEPTH": 2, "VIT.EMBED_DIM": 32, "VIT.NUM_HEADS": 2},
        vae_hidden=12, upsample_initial_channel=128, seeds=(14100, 14107),
    ),
    "sep_zero_ext_oracle": dict(
        kwargs=dict(latent_dim=40, clip_dim=24, sync_dim=32, text_dim=24, hidden_dim=32,
                    depth=1, fused_depth=0, num_heads=2, v2=True),
        duration=1.6, audio=AUDIO_44K, t=[0.15, 0.5, 0.95], cfg=5.5, steps=5,
        seeds=(15100, 15107),
    ),
    "flowley_gen_small": dict(
        config=FlowleyConfig(latent_dim=20, text_dim=64, video_dim=40, hidden_dim=48,
                             text_seq_len=64, multi_depth=1, multi_heads=3, single_depth=3,
                             single_heads=3, mask_window=1, mask_fade_range=3),
        duration=2.0, text_len=[5, 64, 30], t=[0.1, 0.5, 0.95], t_scalar=[0.2, 0.65], cfg=5.0,
        steps=3, seeds=(2200, 2207),
    ),
}  # fmt: skip

# The cases each case reads from OUT.
NEEDS = {
    "textsynch_small": ["preproc_video"],
    "e2e_tiny": ["preproc_video", "gen_small_v1", "textsynch_small", "vae_dec_16k", "bigvgan_16k"],
    "sep_e2e_tiny": ["preproc_video"],
    "sep_e2e_tiny_textonly": ["sep_e2e_tiny"],
    "sep_preproc_video": ["preproc_video"],
    "flowley_psca_bias": ["flowley_gen_small"],
}
RESIZED_NOTE = (
    "Made by tests/golden_resize.py with this project's own networks, not by the official code: "
    "it checks that the golden tests read their sizes from the case, not the numerics. Prose "
    "fields copied from the shared set may still name its sizes; kwargs, args, seeds, tensors "
    "and every field a test reads are this set's."
)


# -- writing -----------------------------------------------------------------------------------


class Case:
    """One case being written: its json (the source's, updated) and tensors."""

    def __init__(self, src: Path, out: Path, name: str):
        self.out, self.name = out, name
        meta = json.loads((src / f"{name}.json").read_text())
        for key in list(meta):  # measurements of the official run; they do not hold here
            if key.startswith(("determinism", "sensitivity", "measured", "discriminative")):
                del meta[key]
        self.meta = meta | {"case": name, "resized": RESIZED_NOTE}
        self.tensors: dict[str, torch.Tensor] = {}

    def add(self, prefix: str, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            self.tensors[f"{prefix}{key}"] = value.detach().contiguous().clone()

    def write(self) -> None:
        self.meta["tensors"] = {
            k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
            for k, v in self.tensors.items()
            if not k.startswith("state")
        }
        self.meta["num_state_tensors"] = sum(k.startswith("state") for k in self.tensors)
        save_file(self.tensors, str(self.out / f"{self.name}.safetensors"))
        (self.out / f"{self.name}.json").write_text(json.dumps(self.meta, indent=1) + "\n")


def tensors_of(out: Path, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    meta = json.loads((out / f"{name}.json").read_text())
    return meta, load_file(str(out / f"{name}.safetensors"))


def state_of(tensors: dict[str, torch.Tensor], prefix: str = "state.") -> dict:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=g)


def seq_kwargs(duration: float, audio) -> dict[str, int]:
    seq = sequence_lengths(duration, audio)
    return dict(latent_seq_len=seq.latent, clip_seq_len=seq.clip, sync_seq_len=seq.sync)


def seq_cfg(seq: SequenceLengths) -> dict[str, int]:
    return {
        "latent_seq_len": seq.latent,
        "clip_seq_len": seq.clip,
        "sync_seq_len": seq.sync,
        "num_audio_frames": seq.audio_samples,
    }


def generator_config(kwargs: dict, separation: bool) -> GeneratorConfig:
    fields = {k: v for k, v in kwargs.items() if not k.endswith("seq_len") or k == "text_seq_len"}
    return GeneratorConfig(**fields, mixture_dim=kwargs["latent_dim"] if separation else 0)


def official_kwargs(sizes: dict, duration: float, audio) -> dict:
    """The official MMAudio(**kwargs) dict (in its order) for `sizes` at `duration`."""
    widths = {k: v for k, v in sizes.items() if k != "v2"}
    seq = seq_kwargs(duration, audio)
    return widths | dict(mlp_ratio=4.0, **seq, text_seq_len=77, v2=sizes["v2"])


# -- cases -------------------------------------------------------------------------------------


def make_preproc_video(src: Path, out: Path) -> None:
    from clips import make_clip

    s = SIZES["preproc_video"]
    case = Case(src, out, "preproc_video")
    path = make_clip(
        out / "preproc_video.mp4",
        frames=s["frames"],
        fps=s["fps"],
        size=s["size"],
        gop=12,
        audio_rate=16000,
    )
    duration = s["duration"]
    video = media.decode_video(path, duration, need_clip=True)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = dict(
            codec=stream.codec_context.name,
            width=stream.width,
            height=stream.height,
            guessed_rate=str(stream.guessed_rate),
            average_rate=str(stream.average_rate),
            time_base=str(stream.time_base),
            frames=stream.frames,
            audio_streams=[
                {"codec": a.codec_context.name, "rate": a.rate} for a in container.streams.audio
            ],
        )
        decoded = [(f.time, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    rgb_index = torch.tensor([0, len(decoded) // 2])
    clip = video.clip_frames.float() * (1 / 255)
    subset = torch.tensor([0, len(clip) - 1])
    case.add(
        "out.",
        {
            "sync_frames_u8": video.sync_frames,
            "clip_frames_u8_subset": video.clip_frames[subset],
            "clip_frames_subset_index": subset,
            "clip_frames_mean_per_frame": clip.mean((1, 2, 3)),
            "clip_frames_std_per_frame": clip.flatten(1).std(1),
            "sync_frames_mean_per_frame": media.to_model_input(video.sync_frames).mean((1, 2, 3)),
            "sync_src_frame_index": video.sync_index,
            "clip_src_frame_index": video.clip_index,
            "decoded_rgb24_subset": torch.from_numpy(np.stack([decoded[i][1] for i in rgb_index])),
            "decoded_rgb24_subset_index": rgb_index,
            "duration_sec": torch.tensor(video.duration, dtype=torch.float32),
            "num_decoded_frames_le_end": torch.tensor(
                sum(t <= duration for t, _ in decoded), dtype=torch.int64
            ),
        },
    )
    data = path.read_bytes()
    case.meta |= {
        "description": f"load_video(path, duration_sec={duration}) on preproc_video.mp4",
        "video_sha256": hashlib.sha256(data).hexdigest(),
        "video_bytes": len(data),
        "video_stream": info,
        "video_synthesis": {
            "width": s["size"][0],
            "height": s["size"][1],
            "fps": s["fps"],
            "seconds": s["frames"] / s["fps"],
            "codec": "libx264 (tests/clips.py)",
        },
        "call": f'selva.utils.eval_utils.load_video(Path("preproc_video.mp4"), '
        f"duration_sec={duration}, load_all_frames=True)",
        "returns": {
            "duration_sec": video.duration,
            "fps": str(video.fps),
            "sync_frames_shape": list(video.sync_frames.shape),
            "clip_frames_shape": list(video.clip_frames.shape),
        },
    }
    case.write()


def make_generator_case(src: Path, out: Path, name: str, separation: bool) -> None:
    s = SIZES[name]
    case = Case(src, out, name)
    kwargs = official_kwargs(s["kwargs"], s["duration"], s["audio"])
    config = generator_config(kwargs, separation)
    lengths = [kwargs[k] for k in ("latent_seq_len", "clip_seq_len", "sync_seq_len")]
    state = gen_mod.random_official_state(config, s["seeds"][0])
    net = Generator(config, *lengths).load_official(state, name).eval()
    g = torch.Generator().manual_seed(s["seeds"][1])
    B, (N, Nc, Ns), C = len(s["t"]), lengths, config.latent_dim
    x = {
        "clip_f": randn(g, B, Nc, config.clip_dim),
        "sync_f": randn(g, B, Ns, config.sync_dim),
        "text_f": randn(g, B, 77, config.text_dim),
        "latent": randn(g, B, N, C),
        "t": torch.tensor(s["t"]),
        "t_scalar": torch.tensor(s["t_scalar"]),
        "x0": randn(g, B, N, C),
        "neg_text_f": randn(g, B, 77, config.text_dim),
    }
    mix = {}
    if separation:
        x["x_cond"] = 1.5 * randn(g, B, N, C) + randn(g, 1, 1, C)
        x["duration"] = torch.tensor(s["duration"], dtype=torch.float64)
        mix = {"x_cond": x["x_cond"]}
    cfg, steps = s["cfg"], s["steps"]
    cond = net.preprocess_conditions(x["clip_f"], x["sync_f"], x["text_f"])
    empty = net.get_empty_conditions(B)
    neg = net.get_empty_conditions(B, x["neg_text_f"])
    t_vec = x["t_scalar"] * torch.ones(B)
    outs = {
        **{f"cond.{k}": v for k, v in cond._asdict().items()},
        **{f"empty_cond.{k}": v for k, v in empty._asdict().items()},
        "flow": net.predict_flow(x["latent"], x["t"], cond, **mix),
        "ode_wrapper_flow": net.cfg_velocity(x["latent"], t_vec, cond, empty, cfg, **mix),
    }
    neg_fields = ("text_f", "text_f_c") if separation else GEN_FIELDS
    outs |= {f"neg_empty_cond.{k}": getattr(neg, k) for k in neg_fields}
    if separation:
        outs["flow_uncond"] = net.predict_flow(x["latent"], x["t"], empty, **mix)
    for key, uncond in (("x1", empty), ("x1_neg", neg)):
        x1 = euler_sample(
            lambda t, z, u=uncond: net.cfg_velocity(z, t, cond, u, cfg, **mix), x["x0"], steps
        )
        outs |= {key: x1, f"{key}_unnorm": net.unnormalize(x1)}
    case.add("state.", state)
    case.add("in.", x)
    case.add("out.", outs)
    case.meta |= {
        "constructor_kwargs": kwargs,
        "seeds": {"weights": s["seeds"][0], "inputs": s["seeds"][1]},
        "args": case.meta["args"] | {"cfg_strength": cfg, "num_steps": steps},
    }
    case.write()


def make_textsynch_small(src: Path, out: Path) -> None:
    s = SIZES["textsynch_small"]
    case = Case(src, out, "textsynch_small")
    config = s["config"]
    state = venc_mod.random_official_state(config, s["seeds"][0])
    enc = VideoEncoder(config).load_official(state, "textsynch_small").eval()
    u8 = tensors_of(out, "preproc_video")[1]["out.sync_frames_u8"]
    frames = torch.stack([media.to_model_input(u8[a:b]) for a, b in s["items"]])
    g = torch.Generator().manual_seed(s["seeds"][1])
    B, L = len(s["items"]), s["text_len"]
    text_f = randn(g, B, L, config.text_dim)
    mask = torch.arange(L)[None] < torch.tensor(s["valid"])[:, None]
    text_p, mask_p = enc.prepend_sup(text_f, mask)
    tokens = enc.trunk(frames)  # [B*S, t*h*w, D] -> the official [B*S, D, t, h, w]
    case.add("state.", state)
    case.add("in.", {"text_f": text_f, "text_mask": mask})
    case.add(
        "out.",
        {
            "text_f_prepended": text_p,
            "text_mask_prepended": mask_p,
            "sync_features": enc(frames, text_f, mask),
            "mformer_features_no_agg": tokens.transpose(1, 2).reshape(len(tokens), -1, 8, 14, 14),
            "text_proj_of_prepended": enc.text_proj(text_p),
        },
    )
    ranges = ",".join(f"[{a}:{b}]" for a, b in s["items"])
    case.meta["constructor_kwargs"] |= {
        "text_dim": config.text_dim,
        "num_sup_text_tokens": config.num_sup_tokens,
        "xattn_depth": config.xattn_depth,
    }
    case.meta["motionformer_config"]["overrides_applied"] = {
        "VIT.DEPTH": config.depth,
        "VIT.EMBED_DIM": config.embed_dim,
        "VIT.NUM_HEADS": config.num_heads,
    }
    case.meta["inputs"]["in.sync_video_source"] = (
        f"preproc_video.safetensors:out.sync_frames_u8[{ranges}]"
    )
    case.meta["seeds"] = {"weights": s["seeds"][0], "inputs": s["seeds"][1]}
    case.write()


def make_vae_dec(src: Path, out: Path, name: str) -> None:
    s = SIZES[name]
    case = Case(src, out, name)
    config = VAEConfig(**s["kwargs"])
    state = {
        k: v
        for k, v in vae_mod.random_official_state(config, s["seeds"][0]).items()
        if not k.startswith("encoder.")
    }
    vae = VAE(config).load_official(state, name).eval()
    B, T = s["z"]
    z = randn(torch.Generator().manual_seed(s["seeds"][1]), B, config.embed_dim, T)
    case.add("state.", state)
    case.add("in.", {"z": z})
    case.add("out.", {"mel": vae.decode(z)})
    case.meta |= {
        "constructor_kwargs": s["kwargs"],
        "seeds": {"weights": s["seeds"][0], "inputs": s["seeds"][1]},
    }
    case.write()


def make_bigvgan(src: Path, out: Path, name: str) -> None:
    s = SIZES[name]
    case = Case(src, out, name)
    hparams = case.meta["config"] | {"upsample_initial_channel": s["upsample_initial_channel"]}
    config = vocoder_config_from_hparams(hparams, name)
    state = voc_mod.random_official_state(config, s["seeds"][0])
    vocoder = BigVGAN(config).load_official(state, name).eval()
    B, L = s["mel"]
    mel = randn(torch.Generator().manual_seed(s["seeds"][1]), B, config.num_mels, L)
    case.add("state.", state)
    case.add("in.", {"mel": mel})
    case.add("out.", {"wav": vocoder(mel)})
    case.meta |= {"config": hparams, "seeds": {"weights": s["seeds"][0], "inputs": s["seeds"][1]}}
    case.write()


def make_e2e_tiny(src: Path, out: Path) -> None:
    """The official generate(): SELVA structure, empty CLIP video, one prompt."""
    s = SIZES["e2e_tiny"]
    case = Case(src, out, "e2e_tiny")
    gen_meta, gen_t = tensors_of(out, "gen_small_v1")
    ts_meta, ts_t = tensors_of(out, "textsynch_small")
    vae_meta, vae_t = tensors_of(out, "vae_dec_16k")
    voc_meta, voc_t = tensors_of(out, "bigvgan_16k")
    duration = s["duration"]
    seq = sequence_lengths(duration, AUDIO_16K)
    kwargs = gen_meta["constructor_kwargs"]
    config = generator_config(kwargs, separation=False)
    net = Generator(config, seq.latent, seq.clip, seq.sync).load_official(state_of(gen_t), "g")
    overrides = ts_meta["motionformer_config"]["overrides_applied"]
    venc = SIZES["textsynch_small"]["config"]
    assert overrides["VIT.EMBED_DIM"] == venc.embed_dim
    enc = VideoEncoder(venc).load_official(state_of(ts_t), "textsynch").eval()
    vae = VAE(VAEConfig(**vae_meta["constructor_kwargs"])).load_official(state_of(vae_t), "vae")
    vocoder = BigVGAN(vocoder_config_from_hparams(voc_meta["config"], "bigvgan"))
    vocoder.load_official(state_of(voc_t), "bigvgan")
    u8 = tensors_of(out, "preproc_video")[1]["out.sync_frames_u8"][: seq.sync_frames]
    frames = media.to_model_input(u8)[None]
    g = torch.Generator().manual_seed(s["seeds"][0])
    x = {
        "text_clip_f": randn(g, 1, 77, config.text_dim),
        "neg_text_clip_f": randn(g, 1, 77, config.text_dim),
        "text_t5_f": randn(g, 1, s["t5_len"], venc.text_dim),
        "text_t5_mask": torch.ones(1, s["t5_len"], dtype=torch.bool),
        "duration": torch.tensor(duration, dtype=torch.float32),  # VideoInfo's, as stored
    }
    text_p, mask_p = enc.prepend_sup(x["text_t5_f"], x["text_t5_mask"])
    sync_f = enc(frames, x["text_t5_f"], x["text_t5_mask"])
    clip_f = net.empty_clip_feat[None].expand(1, seq.clip, -1)
    rng = torch.Generator().manual_seed(s["seed"])
    x0 = torch.randn(1, seq.latent, config.latent_dim, generator=rng)
    cond = net.preprocess_conditions(clip_f, sync_f, x["text_clip_f"])
    empty = net.get_empty_conditions(1, x["neg_text_clip_f"])
    x1 = euler_sample(lambda t, z: net.cfg_velocity(z, t, cond, empty, s["cfg"]), x0, s["steps"])
    unnorm = net.unnormalize(x1)
    mel = vae.decode(unnorm.transpose(1, 2))
    case.add("in.", x)
    case.add(
        "out.",
        {
            "text_f_prepended": text_p,
            "text_mask_prepended": mask_p,
            "sync_features": sync_f,
            "cond_sync_f": cond.sync_f,
            "cond_text_f_c": cond.text_f_c,
            "empty_cond_text_f": empty.text_f,
            "x0": x0,
            "x1": x1,
            "x1_unnorm": unnorm,
            "mel": mel,
            "audio": vocoder(mel),
        },
    )
    cons = case.meta["constructors"]
    cons["generator"]["kwargs"] = kwargs
    cons["video_enc"]["kwargs"] = ts_meta["constructor_kwargs"]
    cons["video_enc"]["motionformer_overrides"] = overrides
    cons["vae"]["kwargs"] = vae_meta["constructor_kwargs"]
    uic = voc_meta["config"]["upsample_initial_channel"]
    cons["vocoder"] = (
        f"BigVGAN(ckpt, config_path=bigvgan_vocoder.yml with upsample_initial_channel={uic})"
    )
    case.meta["procedure"] = [
        f'video_info = load_video("preproc_video.mp4", {duration}); sync_frames = '
        f"video_info.sync_frames.unsqueeze(0); clip_frames = None",
        f'rng = torch.Generator("cpu").manual_seed({s["seed"]}); FlowMatching(num_steps='
        f"{s['steps']}); generate(..., cfg_strength={s['cfg']})",
    ]
    case.meta["inputs"]["in.sync_video"] = (
        f"NOT STORED: official load_video(preproc_video.mp4, {duration}).sync_frames[None] == "
        "preproc_video out.sync_frames_u8 mapped by (u8*(1/255)-0.5)/0.5"
    )
    case.meta["args"] = {
        "cfg_strength": s["cfg"],
        "num_steps": s["steps"],
        "seed": s["seed"],
        "duration": duration,
    }
    case.meta["seq_cfg"] = seq_cfg(seq)
    case.write()


def make_mel_vae_enc_16k(src: Path, out: Path) -> None:
    s = SIZES["mel_vae_enc_16k"]
    case = Case(src, out, "mel_vae_enc_16k")
    config = VAEConfig(**s["kwargs"])
    full = vae_mod.random_official_state(config, s["seeds"][0])
    state = {k: v for k, v in full.items() if not k.startswith("decoder.")}
    enc = MixtureEncoder(
        MelConverter(AUDIO_16K),
        VAE(config, with_encoder=True).load_official(full, "mel_vae_enc_16k"),
    ).eval()
    g = torch.Generator().manual_seed(s["seeds"][1])
    n = torch.arange(s["samples"])
    wav = torch.stack(
        [
            0.6 * torch.sin(n * 0.031 * (b + 1)) + 0.3 * randn(g, s["samples"])
            for b in range(s["batch"])
        ]
    )
    wav[:, 100:106] = torch.tensor([1.4, -1.3, 1.2, -1.1, 1.05, -1.5])  # beyond ±1: the clamp
    mel = enc.mel(wav)
    mean, logvar = enc.vae.encode(mel)
    std = torch.exp(0.5 * logvar)
    rng = torch.Generator().manual_seed(s["rng"])
    sample, eps = sample_mixture(mean, std, rng)
    x0 = torch.randn(sample.shape, generator=rng)
    case.add("state.", state)
    case.add("in.", {"waveform": wav, "rng_seed": torch.tensor(s["rng"])})
    case.add(
        "out.",
        {
            "mel": mel,
            "mean": mean,
            "logvar": logvar,
            "std": std,
            "eps": eps,
            "sample": sample,
            "x0_next": x0,
        },
    )
    args = ", ".join(f"{k}={v}" for k, v in s["kwargs"].items())
    case.meta["constructor"]["vae"] = f"mmaudio.ext.autoencoder.vae.VAE({args})"
    case.meta["seeds"] = {"weights": s["seeds"][0], "inputs": s["seeds"][1], "rng": s["rng"]}
    case.write()


def mixture_wave(samples: int, seed: int) -> torch.Tensor:
    """A tone plus noise bursts, peak 0.9 (the shared set's recipe, other numbers)."""
    t = torch.arange(samples, dtype=torch.float64) / 16000
    tone = sum(a * torch.sin(2 * math.pi * f * t) for a, f in ((0.5, 330), (0.25, 660)))
    g = torch.Generator().manual_seed(seed)
    bursts = 0.6 * torch.randn(samples, generator=g, dtype=torch.float64)
    bursts = bursts * (((t - 0.05) % 0.29) < 0.12)
    wav = tone + bursts
    return (0.9 * wav / wav.abs().max()).float()[None]


def make_sep_e2e(src: Path, out: Path, name: str) -> None:
    """The official separate(), with a video and text query or (textonly) text alone."""
    s = SIZES["sep_e2e_tiny"]
    video = name == "sep_e2e_tiny"
    case = Case(src, out, name)
    duration = s["duration"]
    seq = sequence_lengths(duration, AUDIO_16K)
    kwargs = official_kwargs(s["net"], 8.0, AUDIO_16K)
    config = generator_config(kwargs, separation=True)
    c = s["clip"]
    clip_config = ClipConfig(
        embed_dim=c["embed_dim"],
        image_width=c["width"],
        image_layers=c["layers"],
        image_heads=c["width"] // c["head_width"],
        patch_size=c["patch_size"],
        image_size=384,
    )
    mf = s["motionformer"]
    venc = VideoEncoderConfig(
        embed_dim=mf["VIT.EMBED_DIM"],
        depth=mf["VIT.DEPTH"],
        num_heads=mf["VIT.NUM_HEADS"],
        num_sup_tokens=0,
        xattn_depth=0,
    )
    vae_config = VAEConfig(data_dim=80, embed_dim=20, hidden_dim=s["vae_hidden"])
    # bigvgan_vocoder.yml: the shared bigvgan_16k case's config, another channel count.
    voc_hparams = json.loads((src / "bigvgan_16k.json").read_text())["config"]
    voc_hparams |= {"upsample_initial_channel": s["upsample_initial_channel"]}
    voc_config = vocoder_config_from_hparams(voc_hparams, "bigvgan")
    if video:
        seeds = s["seeds"][0]
        state = {
            "net": gen_mod.random_official_state(config, seeds),
            "clip": random_clip(clip_config, seeds + 1),
            "synchformer": venc_mod.random_official_state(venc, seeds + 2),
            "vae": vae_mod.random_official_state(vae_config, seeds + 3),
            "vocoder": voc_mod.random_official_state(voc_config, seeds + 4),
        }
        state["clip"] = {k: v for k, v in state["clip"].items() if k.startswith("visual.")}
    else:
        t = tensors_of(out, "sep_e2e_tiny")[1]
        state = {
            p: state_of(t, f"state.{p}.") for p in ("net", "clip", "synchformer", "vae", "vocoder")
        }
    net = Generator(config, seq.latent, seq.clip, seq.sync).load_official(state["net"], "net")
    vae = VAE(vae_config, with_encoder=True).load_official(state["vae"], "vae")
    vocoder = BigVGAN(voc_config).load_official(state["vocoder"], "vocoder")
    g = torch.Generator().manual_seed(s["seeds"][1])
    x = {
        "text_clip_f": F.normalize(randn(g, 1, 77, config.text_dim), dim=-1),
        "neg_text_clip_f": F.normalize(randn(g, 1, 77, config.text_dim), dim=-1),
        "mixture": mixture_wave(seq.audio_samples, s["seeds"][1]),
        "duration": torch.tensor(duration, dtype=torch.float64),
        "rng_seed": torch.tensor(s["seed"]),
    }
    outs = {}
    if video:
        clip_enc = ClipImageEncoder(clip_config).load_official(state["clip"], "clip").eval()
        enc = VideoEncoder(venc).load_official(state["synchformer"], "synchformer").eval()
        decoded = media.decode_video(out / "preproc_video.mp4", duration, need_clip=True)
        clip_u8 = decoded.clip_frames
        u8 = tensors_of(out, "preproc_video")[1]["out.sync_frames_u8"][: seq.sync_frames]
        clip_f = clip_enc(clip_u8.float() / 255)[None]
        sync_f = enc(media.to_model_input(u8)[None])
        outs |= {"clip_features": clip_f, "sync_features": sync_f}
    else:
        clip_f = net.empty_clip_feat[None].expand(1, seq.clip, -1)
        sync_f = net.empty_sync_feat[None].expand(1, seq.sync, -1)
    mixture = MixtureEncoder(MelConverter(AUDIO_16K), vae).eval()
    mel_mix = mixture.mel(x["mixture"])
    mean, logvar = vae.encode(mel_mix)
    std = torch.exp(0.5 * logvar)
    rng = torch.Generator().manual_seed(s["seed"])
    x_cond, eps = sample_mixture(mean, std, rng)
    x0 = torch.randn(1, seq.latent, config.latent_dim, generator=rng)
    cond = net.preprocess_conditions(clip_f, sync_f, x["text_clip_f"])
    empty = net.get_empty_conditions(1, x["neg_text_clip_f"])
    x1 = euler_sample(
        lambda t, z: net.cfg_velocity(z, t, cond, empty, s["cfg"], x_cond=x_cond), x0, s["steps"]
    )
    unnorm = net.unnormalize(x1)
    mel = vae.decode(unnorm.transpose(1, 2))
    outs |= {
        "mix_mel": mel_mix,
        "mix_mean": mean,
        "mix_std": std,
        "eps": eps,
        "x_cond": x_cond,
        "cond_sync_f": cond.sync_f,
        "cond_clip_f_c": cond.clip_f_c,
        "cond_text_f_c": cond.text_f_c,
        "x0": x0,
        "x1": x1,
        "x1_unnorm": unnorm,
        "mel": mel,
        "audio": vocoder(mel),
    }
    if video:
        for prefix, values in state.items():
            case.add(f"state.{prefix}.", values)
    case.add("in.", x)
    case.add("out.", outs)
    cons = case.meta["constructors"]
    cons["net"]["kwargs"] = kwargs
    cons["clip"]["config"]["embed_dim"] = c["embed_dim"]
    cons["clip"]["config"]["vision_cfg"] |= {
        k: c[k] for k in ("width", "layers", "head_width", "patch_size")
    }
    cons["synchformer"]["motionformer_overrides"] = mf
    cons["vae"]["cls"] = (
        f"mmaudio.ext.autoencoder.vae.VAE(data_dim=80, embed_dim=20, hidden_dim={s['vae_hidden']})"
    )
    cons["vocoder"]["cls"] = (
        "mmaudio.ext.bigvgan.BigVGAN(ckpt) with bigvgan_vocoder.yml, upsample_initial_channel="
        f"{s['upsample_initial_channel']} (real 1536), everything else official"
    )
    case.meta["procedure"] = [
        f"rng = torch.Generator(device='cpu'); rng.manual_seed({s['seed']}); "
        f"FlowMatching(num_steps={s['steps']})",
        f"seq_cfg = CONFIG_16K with duration={duration}",
        f"separate(..., cfg_strength={s['cfg']})",
    ]
    case.meta |= {"prompt": s["prompt"], "negative_prompt": s["negative_prompt"]}
    case.meta["args"] = {
        "cfg_strength": s["cfg"],
        "num_steps": s["steps"],
        "seed": s["seed"],
        "duration": duration,
        "batch": 1,
    }
    case.meta["seq_cfg"] = seq_cfg(seq)
    inputs = case.meta["inputs"]
    if video:
        inputs["in.sync_video"] = (
            f"NOT STORED: (1, {seq.sync_frames}, 3, 224, 224) = preproc_video.safetensors:"
            f"out.sync_frames_u8[0:{seq.sync_frames}] mapped by (u8*(1/255)-0.5)/0.5"
        )
        inputs["in.clip_video"] = (
            f"NOT STORED (size): official mmaudiosep.eval_utils.load_video(preproc_video.mp4, "
            f"{duration}).clip_frames[None]"
        )
        inputs["clip_frames_u8_sha256"] = [
            hashlib.sha256(f.numpy().tobytes()).hexdigest() for f in clip_u8
        ]
        inputs.pop("clip_frames_check_vs_preproc_video", None)
    case.meta["seeds"] = {"weights": s["seeds"][0], "inputs": s["seeds"][1], "rng": s["seed"]}
    case.write()


def make_sep_zero_ext_oracle(src: Path, out: Path) -> None:
    s = SIZES["sep_zero_ext_oracle"]
    case = Case(src, out, "sep_zero_ext_oracle")
    kwargs = official_kwargs(s["kwargs"], s["duration"], s["audio"])
    base = generator_config(kwargs, separation=False)
    lengths = [kwargs[k] for k in ("latent_seq_len", "clip_seq_len", "sync_seq_len")]
    state = gen_mod.random_official_state(base, s["seeds"][0])
    w = state["audio_input_proj.0.weight"]
    wide = state | {"audio_input_proj.0.weight": torch.cat([w, torch.zeros_like(w)], 1)}
    mm = Generator(base, *lengths).load_official(state, "mmaudio").eval()
    sep_config = generator_config(kwargs, separation=True)
    sep = Generator(sep_config, *lengths).load_official(wide, "sep").eval()
    g = torch.Generator().manual_seed(s["seeds"][1])
    B, (N, Nc, Ns), C = len(s["t"]), lengths, base.latent_dim
    x = {
        "clip_f": randn(g, B, Nc, base.clip_dim),
        "sync_f": randn(g, B, Ns, base.sync_dim),
        "text_f": randn(g, B, 77, base.text_dim),
        "latent": randn(g, B, N, C),
        "t": torch.tensor(s["t"]),
        "x0": randn(g, B, N, C),
        "x_cond": 1.5 * randn(g, B, N, C),
        "duration": torch.tensor(s["duration"], dtype=torch.float64),
    }
    cfg, steps = s["cfg"], s["steps"]
    outs = {}
    for key, net, mix in (("mmaudio", mm, {}), ("sep", sep, {"x_cond": x["x_cond"]})):
        cond = net.preprocess_conditions(x["clip_f"], x["sync_f"], x["text_f"])
        empty = net.get_empty_conditions(B)
        outs[f"flow_{key}"] = net.predict_flow(x["latent"], x["t"], cond, **mix)
        outs[f"x1_{key}"] = euler_sample(
            lambda t, z, n=net, c=cond, e=empty, m=mix: n.cfg_velocity(z, t, c, e, cfg, **m),
            x["x0"],
            steps,
        )
    case.add("state.", wide)
    case.add("state_mmaudio.", {"audio_input_proj.0.weight": w})
    case.add("in.", x)
    case.add("out.", outs)
    case.meta["constructor_kwargs"] = kwargs
    case.meta["seeds"] = {"weights": s["seeds"][0], "inputs": s["seeds"][1]}
    case.meta["procedure"] = [
        "cm = mmaudio.preprocess_conditions(in.clip_f, in.sync_f, in.text_f); "
        "out.flow_mmaudio = mmaudio.predict_flow(in.latent, in.t, cm)",
        "cs = sep.preprocess_conditions(in.clip_f, in.sync_f, in.text_f, in.x_cond); "
        "out.flow_sep = sep.predict_flow(in.latent, in.t, cs)",
        f"out.x1_mmaudio = Euler {steps} steps CFG {cfg} from in.x0 with "
        "mmaudio.get_empty_conditions(B)",
        f"out.x1_sep = Euler {steps} steps CFG {cfg} from in.x0 with "
        "sep.get_empty_conditions(B, in.x_cond)",
    ]
    case.write()


def make_sep_preproc_video(src: Path, out: Path) -> None:
    case = Case(src, out, "sep_preproc_video")
    duration = SIZES["preproc_video"]["duration"]
    video = media.decode_video(
        out / "preproc_video.mp4", duration, need_clip=True, sync_center_crop=True
    )
    frames = video.sync_frames
    subset = torch.tensor([0, len(frames) - 1])
    case.add(
        "out.",
        {
            "sync_frames_u8_subset": frames[subset],
            "sync_frames_subset_index": subset,
            "sync_frames_mean_per_frame": media.to_model_input(frames).mean((1, 2, 3)),
            "clip_frames_mean_per_frame": (video.clip_frames.float() / 255).mean((1, 2, 3)),
            "duration_sec": torch.tensor(video.duration, dtype=torch.float64),
        },
    )
    case.meta["call"] = (
        f'mmaudiosep.eval_utils.load_video(Path("preproc_video.mp4"), {duration}, '
        "load_all_frames=False)"
    )
    case.meta["sync_frames_u8_sha256"] = [
        hashlib.sha256(f.numpy().tobytes()).hexdigest() for f in frames
    ]
    case.meta["clip_frames_u8_sha256"] = [
        hashlib.sha256(f.numpy().tobytes()).hexdigest() for f in video.clip_frames
    ]
    case.meta.pop("vs_selva_preproc_video", None)
    case.write()


def official_flowley_kwargs(config: FlowleyConfig, la: int, lv: int, base: dict) -> dict:
    return base | {
        "audio_dim": config.latent_dim,
        "text_dim": config.text_dim,
        "video_dim": config.video_dim,
        "hidden_dim": config.hidden_dim,
        "audio_seq_len": la,
        "text_seq_len": config.text_seq_len,
        "video_fps": config.video_fps,
        "visual_seq_len": lv,
        "multi_n_layers": config.multi_depth,
        "multi_n_heads": config.multi_heads,
        "single_n_layers": config.single_depth,
        "single_n_heads": config.single_heads,
        "mask_window_size": config.mask_window,
        "mask_fade_range": config.mask_fade_range,
        "mlp_ratio": config.mlp_ratio,
    }


def make_flowley_gen_small(src: Path, out: Path) -> None:
    s = SIZES["flowley_gen_small"]
    case = Case(src, out, "flowley_gen_small")
    config = s["config"]
    seq = sequence_lengths(s["duration"], AUDIO_16K)
    la, lv = seq.latent, int(s["duration"] * config.video_fps)
    state = flowley_mod.random_official_state(config, s["seeds"][0])
    net = Flowley(config, la, lv).load_official(state, "flowley").eval()
    g = torch.Generator().manual_seed(s["seeds"][1])
    B = len(s["t"])
    x = {
        "latent": randn(g, B, la, config.latent_dim),
        "visual_feat": F.normalize(randn(g, B, lv, config.video_dim), dim=-1),
        "text_feat": F.normalize(randn(g, B, config.text_seq_len, config.text_dim), dim=1),
        "text_len": torch.tensor(s["text_len"]),
        "t": torch.tensor(s["t"]),
        **{f"t_scalar{k}": torch.tensor(v) for k, v in enumerate(s["t_scalar"])},
        "x0": randn(g, B, la, config.latent_dim),
        "cfg_strength": torch.tensor(s["cfg"], dtype=torch.float64),
    }
    text, visual, text_len = x["text_feat"], x["visual_feat"], x["text_len"]
    captured = {}

    def tap(name):
        def hook(module, args, result):
            key = name if name.startswith("mm") else f"single{len(captured) - config.multi_depth}"
            captured[key] = result[0] if isinstance(result, tuple) else result

        return hook

    hooks = [b.register_forward_hook(tap(f"mm{i}")) for i, b in enumerate(net.multimodal_stream)]
    hooks.append(net.tied_block.register_forward_hook(tap("single")))
    flow = net(x["latent"], text, visual, text_len, x["t"])
    for h in hooks:
        h.remove()
    cond = net.project_conditions(text, visual, text_len)
    uncond = net.empty_conditions(text_len)
    outs = {
        "flow": flow,
        "proj_visual_feat": cond.visual_f,
        "cond_feat": net.condition(cond.global_c, x["t"]),
        **{f"inter.{k}.audio": v for k, v in captured.items()},
    }
    for k in range(len(s["t_scalar"])):
        ts = x[f"t_scalar{k}"][None]
        outs |= {
            f"cfg_flow{k}": net.cfg_velocity(x["latent"], ts, cond, uncond, s["cfg"]),
            f"cond_flow{k}": net.predict_flow(x["latent"], ts, cond),
            f"uncond_flow{k}": net.predict_flow(x["latent"], ts, uncond),
        }

    def step(z, t, conditions, cfg):
        half = FlowleyConditions(**conditions)
        c, u = (FlowleyConditions(*(f[i * B : (i + 1) * B] for f in half)) for i in (0, 1))
        return net.cfg_velocity(z, t, c, u, cfg)

    both = cat_conditions(cond, uncond)._asdict()
    x1 = euler_loop(step, x["x0"], both, s["steps"], s["cfg"])
    outs |= {"x1": x1, "x1_denorm": net.unnormalize(x1)}
    case.add("state.", state)
    case.add("in.", x)
    case.add("out.", outs)
    case.meta["constructor_kwargs"] = official_flowley_kwargs(
        config, la, lv, case.meta["constructor_kwargs"]
    )
    case.meta["flow_matching_kwargs"]["num_steps"] = s["steps"]
    case.meta |= {
        "B": B,
        "text_len": s["text_len"],
        "seeds": {"weights": s["seeds"][0], "inputs": s["seeds"][1]},
    }
    case.meta["args"] |= {"cfg_strength": s["cfg"], "num_steps": s["steps"]}
    case.write()


def make_flowley_psca_bias(src: Path, out: Path) -> None:
    """`real`: the released configuration as in the shared set; `model`: OUT's gen_small."""
    case = Case(src, out, "flowley_psca_bias")
    kwargs = tensors_of(out, "flowley_gen_small")[0]["constructor_kwargs"]
    layers, la, lv = kwargs["single_n_layers"], kwargs["audio_seq_len"], kwargs["visual_seq_len"]
    real = load_file(str(src / "flowley_psca_bias.safetensors"))["out.real.bias"]
    window, fade_range = kwargs["mask_window_size"], kwargs["mask_fade_range"]
    biases = []
    for layer in range(layers):
        params = psca.PSCALayer(layer, layers, window=window, fade_range=fade_range)
        biases.append((psca.psca_mask(params, la, lv) + params.eps).log())
    model = torch.stack(biases)
    case.add("out.", {"real.bias": real, "model.bias": model})
    case.meta["shapes"] = {"real.bias": list(real.shape), "model.bias": list(model.shape)}
    case.meta.pop("observed", None)
    case.write()


CASES: dict[str, Callable[[Path, Path], None]] = {
    "preproc_video": make_preproc_video,
    "gen_small_v1": lambda s, o: make_generator_case(s, o, "gen_small_v1", separation=False),
    "gen_small_v2": lambda s, o: make_generator_case(s, o, "gen_small_v2", separation=False),
    "textsynch_small": make_textsynch_small,
    "vae_dec_16k": lambda s, o: make_vae_dec(s, o, "vae_dec_16k"),
    "vae_dec_44k": lambda s, o: make_vae_dec(s, o, "vae_dec_44k"),
    "bigvgan_16k": lambda s, o: make_bigvgan(s, o, "bigvgan_16k"),
    "bigvgan_v2_44k": lambda s, o: make_bigvgan(s, o, "bigvgan_v2_44k"),
    "e2e_tiny": make_e2e_tiny,
    "sep_gen_small_16k": lambda s, o: make_generator_case(s, o, "sep_gen_small_16k", True),
    "sep_gen_small_44k_v2": lambda s, o: make_generator_case(s, o, "sep_gen_small_44k_v2", True),
    "mel_vae_enc_16k": make_mel_vae_enc_16k,
    "sep_e2e_tiny": lambda s, o: make_sep_e2e(s, o, "sep_e2e_tiny"),
    "sep_e2e_tiny_textonly": lambda s, o: make_sep_e2e(s, o, "sep_e2e_tiny_textonly"),
    "sep_zero_ext_oracle": make_sep_zero_ext_oracle,
    "sep_preproc_video": make_sep_preproc_video,
    "flowley_gen_small": make_flowley_gen_small,
    "flowley_psca_bias": make_flowley_psca_bias,
}


def with_needs(names: list[str]) -> list[str]:
    """`names` and every case they read, in CASES order."""
    wanted, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in CASES:
            raise SystemExit(f"unknown case {name!r}; cases: {', '.join(CASES)}")
        if name not in wanted:
            wanted.add(name)
            todo += NEEDS.get(name, [])
    return [n for n in CASES if n in wanted]


@torch.inference_mode()
def resize(out: Path, names: list[str] | None = None, src: Path = SUITE_GOLDEN) -> list[str]:
    """Write the cases `names` (default: all) and those they read into the new folder `out`."""
    if out.resolve() == SUITE_GOLDEN.resolve() or out.resolve() == src.resolve():
        raise SystemExit(f"{out} holds the golden set itself; write the resized set elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise SystemExit(f"{out} is not empty")
    made = with_needs(names or list(CASES))
    for name in made:
        CASES[name](src, out)
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a new or empty folder")
    parser.add_argument("--cases", help="comma-separated case names (default: all)")
    parser.add_argument("--source", type=Path, default=SUITE_GOLDEN, help="the shared set")
    args = parser.parse_args(argv)
    made = resize(args.out, args.cases.split(",") if args.cases else None, args.source)
    print(f"{len(made)} cases in {args.out}: {', '.join(made)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
