"""VATT's graphs: the eva02 tower, one VATT Audio step and the Encodec decoder, traced to ONNX
and checked in ONNX Runtime against the torch parts (`VattTorchParts`, fp32, CPU), as
`onnx_export` does for the flow parts. `selva-rt export --variant tiny-vatt --out DIR
--onnx-only` builds them (build_engines hands VATT variants to `build` here).

    eva02            crops [N, 3, S, S] uint8 -> features [N, 768] float (normalisation inside)
    vatt_step        tokens [B, K, T] int64, cond [B, Nc, E], pad_mask [B, Nc] bool
                     -> logits_cond, logits_uncond [B, K, T, V] (VattAudio.forward: the CFG pair
                     as one batch of 2B inside, as officially); Nc dynamic (the prompt's length)
    encodec_decoder  tokens [B, K, T] int64 -> waveform [B, T * hop] (T dynamic)

Not exported: the LLM converter (one forward per prompt per window, the 7B weights past
protobuf's 2 GiB, and the low-memory staging of `VattTorchParts`; `VattOrtParts` runs it on
torch) and the MaskGIT sampler (torch, for the official CPU generator's draws). fp32 only; no
TensorRT engines for VATT yet (--onnx-only).
"""

import hashlib
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from ..runtime.backends.graphs import MANIFEST, Manifest, PartEntry
from ..runtime.backends.vatt_ort_parts import PARTS
from ..runtime.backends.vatt_parts import VattTorchParts
from ..runtime.errors import SelvaError, UsageError
from ..runtime.models import eva02
from ..runtime.models.vatt_networks import VattNetworks
from ..runtime.variants import Variant, VattConfig
from .onnx_export import OPSET, clean_graph, errors, sha256_file
from .plan import TensorSpec

CHECK_RTOL = 1e-4  # fp32: kernel rounding only


class Eva02Part(nn.Module):
    def __init__(self, tower: eva02.Eva02Vision):
        super().__init__()
        self.tower = tower

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.tower(eva02.normalize(crops, self.tower.config))


class VattStepPart(nn.Module):
    def __init__(self, audio: nn.Module):
        super().__init__()
        self.audio = audio

    def forward(self, tokens, cond, pad_mask):
        return self.audio(tokens, cond, pad_mask)


class EncodecDecoderPart(nn.Module):
    def __init__(self, codec: nn.Module):
        super().__init__()
        self.codec = codec

    def forward(self, tokens):
        return self.codec.decode(tokens)[:, 0]


def part_module(part: str, nets: VattNetworks) -> nn.Module:
    makers = {
        "eva02": lambda: Eva02Part(nets.image),
        "vatt_step": lambda: VattStepPart(nets.audio),
        "encodec_decoder": lambda: EncodecDecoderPart(nets.encodec),
    }
    return makers[part]().eval()


def part_io(part: str, variant: Variant) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) with their dims: ints, or names of the dynamic ones."""
    c: VattConfig = variant.generator
    a, s = c.audio, c.image.image_size
    if part == "eva02":
        return [TensorSpec("crops", "uint8", ("frames", 3, s, s))], [
            TensorSpec("features", "float", ("frames", c.image.embed_dim))
        ]
    if part == "vatt_step":
        tokens = TensorSpec("tokens", "int64", ("prompts", a.n_codebooks, a.audio_seq_len))
        logits = ("prompts", a.n_codebooks, a.audio_seq_len, a.num_tokens)
        return [
            tokens,
            TensorSpec("cond", "float", ("prompts", "condition", a.encoder_dim)),
            TensorSpec("pad_mask", "bool", ("prompts", "condition")),
        ], [TensorSpec(name, "float", logits) for name in ("logits_cond", "logits_uncond")]
    if part == "encodec_decoder":
        return [TensorSpec("tokens", "int64", ("prompts", c.encodec.n_q, "frames"))], [
            TensorSpec("waveform", "float", ("prompts", "samples"))
        ]
    raise ValueError(f"unknown VATT part {part!r}")


@dataclass(frozen=True)
class Sizes:
    prompts: int
    condition: int  # Nc: 10 video tokens + the prompt's ids
    frames: int  # eva02 frames, or Encodec frames


EXPORT_SIZES = Sizes(prompts=2, condition=24, frames=6)
CHECK_SIZES = (Sizes(prompts=1, condition=17, frames=3), Sizes(prompts=3, condition=31, frames=11))


def sample_inputs(part: str, variant: Variant, sizes: Sizes, seed: int) -> dict[str, torch.Tensor]:
    """Random graph inputs in realistic ranges: tokens with MASK among them, a left-padded
    condition (the pad mask matters), uint8 crops."""
    gen = torch.Generator().manual_seed(seed)
    c: VattConfig = variant.generator
    a, P = c.audio, sizes.prompts
    if part == "eva02":
        s = c.image.image_size
        return {"crops": torch.randint(0, 256, (sizes.frames, 3, s, s), generator=gen).byte()}
    if part == "vatt_step":
        tokens = torch.randint(0, a.num_tokens, (P, a.n_codebooks, a.audio_seq_len), generator=gen)
        masked = torch.rand(tokens.shape, generator=gen) < 0.5
        pad = torch.ones(P, sizes.condition, dtype=torch.bool)
        pad[-1, c.converter.video_tokens : c.converter.video_tokens + 3] = False
        return {
            "tokens": tokens.masked_fill(masked, a.num_tokens),
            "cond": torch.randn(P, sizes.condition, a.encoder_dim, generator=gen),
            "pad_mask": pad,
        }
    if part == "encodec_decoder":
        frames = 25 * sizes.frames  # 0.5 s per frame count unit: several LSTM steps
        shape = (P, c.encodec.n_q, frames)
        return {"tokens": torch.randint(0, c.encodec.bins, shape, generator=gen)}
    raise ValueError(f"unknown VATT part {part!r}")


def torch_outputs(part: str, parts: VattTorchParts, feeds: dict) -> list[torch.Tensor]:
    """The torch parts' results for the same inputs (what the ORT backend stands in for)."""
    if part == "eva02":
        return [parts.image_features(feeds["crops"])]
    if part == "vatt_step":
        return list(parts.logits(feeds["tokens"], feeds["cond"], feeds["pad_mask"]))
    return [parts.decode(feeds["tokens"])]


def export_part(part: str, variant: Variant, nets: VattNetworks, path: Path) -> tuple[str, float]:
    """Trace the fp32 part to `path`: (sha256, seconds)."""
    inputs, outputs = part_io(part, variant)
    feeds = sample_inputs(part, variant, EXPORT_SIZES, seed=0)
    dims = {
        "prompts": torch.export.Dim("prompts", min=1, max=1024),
        "condition": torch.export.Dim("condition", min=11, max=1024),
        "frames": torch.export.Dim("frames", min=2, max=1 << 20),
    }
    dynamic = {
        s.name: {i: dims[n] for i, n in enumerate(s.shape) if n in dims} or None for s in inputs
    }
    t0 = time.perf_counter()
    path.unlink(missing_ok=True)
    if part == "encodec_decoder":
        # torch.export unrolls the LSTM over the traced length; the TorchScript exporter
        # writes ONNX's LSTM operator, whose sequence length stays dynamic.
        axes = {s.name: {i: n for i, n in enumerate(s.shape) if isinstance(n, str)} for s in inputs}
        axes.update({s.name: {0: "prompts", 1: "samples"} for s in outputs})
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                part_module(part, nets),
                tuple(feeds.values()),
                str(path),
                input_names=[s.name for s in inputs],
                output_names=[s.name for s in outputs],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
        return sha256_file(path), time.perf_counter() - t0
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            part_module(part, nets),
            kwargs=feeds,
            dynamic_shapes=dynamic,
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            opset_version=OPSET,
            dynamo=True,
            optimize=False,
            verbose=False,
        )
    clean_graph(program.model)
    program.save(str(path))
    return sha256_file(path), time.perf_counter() - t0


def check_part(part: str, variant: Variant, parts: VattTorchParts, path: Path) -> dict:
    """The graph in ONNX Runtime against the fp32 torch parts at sizes other than the traced
    one, one prompt among them: output -> worst {rel_l2, max_abs}."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _, outputs = part_io(part, variant)
    worst: dict[str, dict[str, float]] = {}
    for i, s in enumerate(CHECK_SIZES):
        feeds = sample_inputs(part, variant, s, seed=100 + i)
        expected = torch_outputs(part, parts, feeds)
        actual = session.run(None, {k: v.numpy() for k, v in feeds.items()})
        for spec, a, e in zip(outputs, actual, expected, strict=True):
            err = errors(torch.from_numpy(a), e)
            if spec.name not in worst or err["rel_l2"] > worst[spec.name]["rel_l2"]:
                worst[spec.name] = err
    return worst


def model_hash(nets: VattNetworks) -> str:
    """sha256 over the weights of the exported networks (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for role, module in (("image", nets.image), ("audio", nets.audio), ("encodec", nets.encodec)):
        for key, t in sorted(module.state_dict().items()):
            shape = t.shape
            t = t.detach().cpu().contiguous().reshape(-1)
            h.update(f"{role}.{key}:{t.dtype}:{tuple(shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def io_entries(part: str, variant: Variant) -> dict[str, list[dict]]:
    inputs, outputs = part_io(part, variant)
    dtype = {"float": "float32", "uint8": "uint8", "int64": "int64", "bool": "bool"}
    return {
        key: [{"name": s.name, "dtype": dtype[s.dtype], "shape": list(s.shape)} for s in specs]
        for key, specs in (("inputs", inputs), ("outputs", outputs))
    }


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def resolve_parts(asked: list[str] | None) -> list[str]:
    if not asked:
        return list(PARTS)
    asked = [p for item in asked for p in item.split(",") if p]
    for p in asked:
        if p not in PARTS:
            raise UsageError(f"unknown VATT part {p!r}; choose from {', '.join(PARTS)}")
    return list(dict.fromkeys(asked))


def build(
    args, parts: list[str], previous: Manifest | None, tools: dict, nets: VattNetworks | None
) -> Manifest:
    """`selva-rt export` for a VATT variant (build_engines checked the arguments and the
    output folder: `previous` is the manifest a --force rebuild may merge into): the graphs,
    each checked, and the manifest. `nets`: the networks (default: the variant's files)."""
    from ..runtime import weights
    from ..runtime.models.vatt_networks import build_vatt_networks
    from ..runtime.variants import get_variant

    variant = get_variant(args.variant)
    if args.precision != "fp32":
        raise UsageError(f"{variant.name}'s graphs are exported in fp32 only")
    if not args.onnx_only:
        raise UsageError(f"{variant.name} has ONNX graphs, no TensorRT build yet: add --onnx-only")
    out = Path(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if nets is None:
        nets = build_vatt_networks(variant, weights.resolve(variant, quiet=args.quiet))
    torch_parts = VattTorchParts(variant, nets, torch.device("cpu"), torch.float32)
    digest = model_hash(nets)
    out.mkdir(parents=True, exist_ok=True)
    entries, failed = {}, []
    for name in parts:
        path = out / f"{name}.onnx"
        sha, seconds = export_part(name, variant, nets, path)
        worst = check_part(name, variant, torch_parts, path)
        entries[name] = PartEntry(
            onnx=path.name,
            sha256=sha,
            precision="fp32",
            **io_entries(name, variant),
            export_s=round(seconds, 2),
            check={
                "against": "torch backend, fp32, CPU",
                "provider": "CPUExecutionProvider",
                "sizes": [vars(s) for s in CHECK_SIZES],
                "rtol": CHECK_RTOL,
                "errors": {
                    k: {m: float(f"{x:.3e}") for m, x in e.items()} for k, e in worst.items()
                },
            },
        )
        rel = max(e["rel_l2"] for e in worst.values())
        _say(f"  {name}: exported in {seconds:.1f} s, ONNX Runtime vs torch {rel:.2e}", args.quiet)
        if not rel <= CHECK_RTOL:
            failed.append(f"{name} (rel L2 {rel:.2e} > {CHECK_RTOL})")
    manifest = Manifest(
        variant=variant.name,
        precision="fp32",
        model_hash=digest,
        opset=OPSET,
        limits={},
        tools=tools,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        parts=entries,
    )
    if previous and (previous.variant, previous.model_hash) == (variant.name, digest):
        manifest.parts = {**previous.parts, **entries}
    manifest.write(out)
    if failed:
        raise SelvaError(f"parts not deployable: {', '.join(failed)}; see {out / MANIFEST}")
    _say(f"wrote {len(parts)} parts to {out} in {time.perf_counter() - t0:.1f} s", args.quiet)
    return manifest
