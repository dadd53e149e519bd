"""Flowley's step (`FlowleyTorchParts.dit_step`, fast mode) traced to ONNX and checked in ONNX
Runtime against the torch backend, as `onnx_export` does for the MM-DiT parts.

The graph's inputs are `plan.part_io("dit_step", flowley_variant)`. Per-duration state is an
input made on the host, as for the MM-DiT: the three fp32 RoPE tables and the PSCA biases of
every application [N, La, Lv] (`psca_attention.psca_mask`, fp32, rounded to the graph's dtype
inside, as the reference rounds them). The tied block runs N times with the same weights, so
the file holds them once. The single-stream block is spelled out with the bias as an SDPA mask;
the joint blocks, projectors and final block are the network's own modules.
"""

import time
import warnings
from pathlib import Path

import torch
from torch import nn

from ..kernels.psca_attention import psca_mask
from ..runtime.models.flowley import Flowley, FlowleyConditions, attention, layer_norm
from ..runtime.models.generator import modulate, rope_table
from ..runtime.variants import Variant
from . import plan
from .onnx_export import OPSET, Sizes, clean_graph, errors, export_dims, sha256_file

EXPORT_SIZES = Sizes(prompts=2, tokens=77, duration=2.0)
CHECK_SIZES = (Sizes(prompts=1, tokens=77, duration=3.0), Sizes(prompts=3, tokens=77, duration=1.6))


class FlowleyStepPart(nn.Module):
    """`Flowley.cfg_velocity_batched` over [latent; latent] and the 2P condition rows."""

    def __init__(self, net: Flowley):
        super().__init__()
        self.net = net

    def forward(
        self,
        latent,
        t,
        text_f,
        visual_f,
        global_c,
        text_len,
        multi_audio_rot,
        multi_visual_rot,
        single_audio_rot,
        psca_bias,
        cfg,
    ):
        net, P = self.net, latent.shape[0]
        x = net.audio_projector(torch.cat([latent, latent]))
        c = net.condition(global_c, torch.cat([t, t]))
        visual, text = visual_f, text_f
        lead = x.shape[1] + visual.shape[1]
        key_bias = net.text_key_bias(text_len, lead, text.shape[1]).to(x.dtype)
        for block in net.multimodal_stream:
            x, visual, text = block(x, visual, text, c, multi_audio_rot, multi_visual_rot, key_bias)
        visual, text = net.cross_visual_proj(visual), net.cross_textual_proj(text)
        for layer in range(net.config.single_depth):
            x = single_block(net.tied_block, x, visual, text, c, single_audio_rot, psca_bias[layer])
        v = net.final_layer(x, c)
        v_cond, v_uncond = v[:P], v[P:]
        cfg = cfg.to(latent.dtype)
        return torch.where(cfg < 1, v_cond, cfg * v_cond + (1 - cfg) * v_uncond)


def single_block(block, x, visual, text, c, rot, bias):
    """`SingleStreamBlock.forward` with the PSCA bias [La, Lv] given (fp32, rounded to x's
    dtype as the reference attention rounds it)."""
    shift_msa, scale_msa, gate_msa, shift_ffn, scale_ffn, gate_ffn = block.adaLN_modulation(c)
    attn = attention(*block.self_attn(modulate(layer_norm(x), shift_msa, scale_msa), rot))
    x = x + block.linear1(attn) * gate_msa
    video = attention(*block.vis_aud_cross_atn(x, visual), bias.to(x.dtype))
    text = attention(*block.tex_aud_cross_atn(x, text))
    alpha = block.cross_weight
    x = x + alpha * text + (1 - alpha) * video
    return x + block.ffn(modulate(layer_norm(x), shift_ffn, scale_ffn)) * gate_ffn


def step_inputs(net: Flowley, latent, t, conditions: dict, cfg: float) -> dict[str, torch.Tensor]:
    """Graph inputs for `dit_step(latent, t, conditions, cfg)` arguments: the tables of the
    conditions' lengths made on the host."""
    c = net.config
    la, lv = latent.shape[1], conditions["visual_f"].shape[1]
    multi, single = c.hidden_dim // c.multi_heads, c.hidden_dim // c.single_heads
    bias = torch.stack([(psca_mask(p, la, lv) + p.eps).log() for p in net.psca])
    return {
        "latent": latent,
        "t": t,
        **{k: conditions[k] for k in FlowleyConditions._fields},
        "multi_audio_rot": rope_table(la, multi, 1.0),
        "multi_visual_rot": rope_table(lv, multi, la / lv),
        "single_audio_rot": rope_table(la, single, 1.0),
        "psca_bias": bias,
        "cfg": torch.tensor(float(cfg)),
    }


def sample_args(variant: Variant, sizes: Sizes, seed: int) -> tuple:
    """Random `dit_step` arguments (fp32): latent [P, La, A], t [P], conditions [2P, ...]."""
    gen = torch.Generator().manual_seed(seed)
    g, P = variant.generator, sizes.prompts
    d = plan.dims(variant, P, sizes.tokens, sizes.duration)
    text_len = torch.randint(1, g.text_seq_len + 1, (P,), generator=gen)
    conditions = {
        "text_f": torch.randn(2 * P, g.text_seq_len, g.hidden_dim, generator=gen),
        "visual_f": torch.randn(2 * P, d["clip_frames"], g.hidden_dim, generator=gen),
        "global_c": torch.randn(2 * P, g.hidden_dim, generator=gen),
        "text_len": torch.cat([text_len, text_len]),
    }
    latent = torch.randn(P, d["latent"], g.latent_dim, generator=gen)
    return latent, torch.rand(P, generator=gen), conditions, variant.cfg


def export_step(variant: Variant, net: Flowley, path: Path) -> tuple[str, float]:
    """Trace the fp32 step to `path`; (sha256, seconds)."""
    inputs, outputs = plan.part_io("dit_step", variant)
    feeds = step_inputs(net, *sample_args(variant, EXPORT_SIZES, seed=0))
    dims = export_dims()
    dynamic = {
        s.name: {i: dims[n] for i, n in enumerate(s.shape) if isinstance(n, str)} or None
        for s in inputs
    }
    t0 = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            FlowleyStepPart(net).eval(),
            kwargs={s.name: feeds[s.name] for s in inputs},
            dynamic_shapes=dynamic,
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            opset_version=OPSET,
            dynamo=True,
            optimize=False,
            verbose=False,
        )
    clean_graph(program.model)
    path.unlink(missing_ok=True)
    program.save(str(path))
    return sha256_file(path), time.perf_counter() - t0


def check_step(
    variant: Variant, parts, path: Path, sizes: tuple[Sizes, ...] = CHECK_SIZES
) -> dict[str, float]:
    """The graph in ONNX Runtime against `parts.dit_step` (FlowleyTorchParts, fp32 fast mode)
    at sizes other than the traced one, one prompt among them: worst {rel_l2, max_abs}."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    net, worst = parts.nets.generator, {"rel_l2": 0.0, "max_abs": 0.0}
    for i, s in enumerate(sizes):
        latent, t, conditions, cfg = sample_args(variant, s, seed=100 + i)
        net.update_seq_lengths(latent.shape[1], conditions["visual_f"].shape[1])
        expected = parts.dit_step(latent, t, conditions, cfg)
        feeds = step_inputs(net, latent, t, conditions, cfg)
        (actual,) = session.run(None, {k: v.numpy() for k, v in feeds.items() if k in names})
        err = errors(torch.from_numpy(actual), expected)
        worst = {k: max(worst[k], err[k]) for k in worst}
    return worst
