"""Flowley against the official code's golden data (`flowley_gen_small`, `flowley_psca_bias`),
loaded through the real checkpoint loader: projectors, conditions, joint blocks, every
application of the tied block (reference PSCA and the Triton kernel under TRITON_INTERPRET=1),
CFG velocities and the 25-step Euler sampler; and the loader's refusal of untied copies."""

import dataclasses

import pytest
import torch
from golden import assert_close, case_path, flowley_config, load_case, setting
from selva_rt.kernels import jit
from selva_rt.kernels import psca_attention as psca
from selva_rt.runtime.errors import CheckpointError
from selva_rt.runtime.models import flowley
from selva_rt.runtime.models.checkpoint import read_state_dict
from selva_rt.runtime.models.flowley import Flowley, FlowleyConditions, cat_conditions
from selva_rt.runtime.sampler import euler_loop
from selva_rt.runtime.variants import FlowleyConfig

CASE = "flowley_gen_small"
# README tolerances: (rel L2, max abs).
SINGLE = (1e-4, 1e-3)
CFG = (2e-4, 5e-3)
EULER = (5e-4, 5e-3)


@pytest.fixture(scope="module")
def case():
    meta, tensors = load_case(CASE)
    cfg, la, lv = flowley_config(meta["constructor_kwargs"])
    with torch.device("meta"):
        net = Flowley(cfg, la, lv)
    state = read_state_dict(case_path(CASE), prefix="state.")
    net.load_official(state, CASE).eval()
    return meta, tensors, net


def inputs(t):
    return t["in.latent"], t["in.text_feat"], t["in.visual_feat"], t["in.text_len"]


@torch.inference_mode()
def test_psca_bias_exact():
    """`real`: the released configuration, with the window and fade range the procedure
    records, sized by the tensor (N, La, Lv); `model`: the flowley_gen_small model's buffer."""
    meta, t = load_case("flowley_psca_bias")
    kwargs = load_case(CASE)[0]["constructor_kwargs"]
    model = kwargs["single_n_layers"], kwargs["audio_seq_len"], kwargs["visual_seq_len"]
    assert t["out.model.bias"].shape == model
    procedure = meta["procedure"]  # "...(La, Lv, ..., window_size=0, fade=True, fade_range=4..."
    settings = {
        "real": (setting(procedure, "window_size"), setting(procedure, "fade_range")),
        "model": (kwargs["mask_window_size"], kwargs["mask_fade_range"]),
    }
    for name, (window, fade_range) in settings.items():
        expected = t[f"out.{name}.bias"]
        layers, la, lv = expected.shape
        for layer in range(layers):
            params = psca.PSCALayer(layer, layers, window=window, fade_range=fade_range)
            bias = (psca.psca_mask(params, la, lv) + params.eps).log()
            assert torch.equal(bias, expected[layer]), f"{name} layer {layer}"


@torch.inference_mode()
def test_network_layers_match_official_biases(case):
    _, _, net = case
    _, t = load_case("flowley_psca_bias")
    for layer, params in enumerate(net.psca):
        bias = (psca.psca_mask(params, net.audio_seq_len, net.visual_seq_len) + 1e-6).log()
        assert torch.equal(bias, t["out.model.bias"][layer])


@torch.inference_mode()
def test_flow_conditions_and_intermediates(case):
    _, t, net = case
    latent, text, visual, text_len = inputs(t)
    captured = {}

    def tap(name):
        def hook(module, args, out):
            applied = len(captured) - net.config.multi_depth
            key = name if name.startswith("mm") else f"single{applied}"
            captured[key] = out[0] if isinstance(out, tuple) else out

        return hook

    hooks = [b.register_forward_hook(tap(f"mm{i}")) for i, b in enumerate(net.multimodal_stream)]
    hooks.append(net.tied_block.register_forward_hook(tap("single")))
    try:
        flow = net(latent, text, visual, text_len, t["in.t"])
    finally:
        for h in hooks:
            h.remove()
    assert_close(f"{CASE}.flow", flow, t["out.flow"], *SINGLE)
    cond = net.project_conditions(text, visual, text_len)
    assert_close(f"{CASE}.proj_visual_feat", cond.visual_f, t["out.proj_visual_feat"], *SINGLE)
    assert_close(
        f"{CASE}.cond_feat", net.condition(cond.global_c, t["in.t"]), t["out.cond_feat"], *SINGLE
    )
    assert len(captured) == net.config.multi_depth + net.config.single_depth
    for key, value in captured.items():
        assert_close(f"{CASE}.inter.{key}.audio", value, t[f"out.inter.{key}.audio"], *SINGLE)


@torch.inference_mode()
def test_tied_block_runs_the_triton_kernel_in_place(case):
    """Every application of the tied block with the PSCA Triton kernel (interpreted on the CPU)
    where the network calls it, against the official per-application outputs."""
    pytest.importorskip("triton")
    # kernels/jit.py read TRITON_INTERPRET when it was imported (conftest.py sets it first): on
    # a machine without CUDA the kernel can only run interpreted, so the process must be.
    assert jit.INTERPRETED or torch.cuda.is_available(), "Triton is not interpreted on a CPU"
    calls = []

    def kernel(q, k, v, params):
        calls.append(params.layer)
        return psca.psca_attention_triton(q, k, v, params)

    _, t, net = case
    latent, text, visual, text_len = inputs(t)
    captured = []
    hook = net.tied_block.register_forward_hook(lambda m, a, out: captured.append(out))
    try:
        flow = net(latent, text, visual, text_len, t["in.t"], psca_fn=kernel)
    finally:
        hook.remove()
    assert calls == list(range(net.config.single_depth))
    for layer, out in enumerate(captured):
        name = f"inter.single{layer}.audio"
        assert_close(f"{CASE}.{name}[triton]", out, t[f"out.{name}"], *SINGLE)
    assert_close(f"{CASE}.flow[triton]", flow, t["out.flow"], *SINGLE)


@torch.inference_mode()
@pytest.mark.parametrize("k", [0, 1])
def test_cfg_velocity_and_branches(case, k):
    meta, t, net = case
    latent, text, visual, text_len = inputs(t)
    s = float(t["in.cfg_strength"])
    assert s == meta["args"]["cfg_strength"]
    ts = t[f"in.t_scalar{k}"][None]  # the sampler's 0-d t, unsqueezed as the official code
    cond = net.project_conditions(text, visual, text_len)
    uncond = net.empty_conditions(text_len)
    assert_close(
        f"{CASE}.cond_flow{k}", net.predict_flow(latent, ts, cond), t[f"out.cond_flow{k}"], *SINGLE
    )
    assert_close(
        f"{CASE}.uncond_flow{k}",
        net.predict_flow(latent, ts, uncond),
        t[f"out.uncond_flow{k}"],
        *SINGLE,
    )
    two_pass = net.cfg_velocity(latent, ts, cond, uncond, s)
    assert_close(f"{CASE}.cfg_flow{k}", two_pass, t[f"out.cfg_flow{k}"], *CFG)
    B = latent.shape[0]
    batched = net.cfg_velocity_batched(latent, ts.expand(B), cat_conditions(cond, uncond), s)
    assert_close(f"{CASE}.cfg_flow{k}[batched]", batched, t[f"out.cfg_flow{k}"], *CFG)


@torch.inference_mode()
def test_euler_sampler(case):
    meta, t, net = case
    latent, text, visual, text_len = inputs(t)
    s, steps = meta["args"]["cfg_strength"], meta["args"]["num_steps"]
    cond = net.project_conditions(text, visual, text_len)
    cond = cat_conditions(cond, net.empty_conditions(text_len))

    def step(x, tt, conditions, cfg):
        return net.cfg_velocity_batched(x, tt, FlowleyConditions(**conditions), cfg)

    x1 = euler_loop(step, t["in.x0"], cond._asdict(), steps, s)
    assert_close(f"{CASE}.x1", x1, t["out.x1"], *EULER)
    assert_close(f"{CASE}.x1_denorm", net.unnormalize(x1), t["out.x1_denorm"], *EULER)


def test_loader_refuses_untied_copies(case):
    meta, _, _ = case
    cfg, la, lv = flowley_config(meta["constructor_kwargs"])
    if cfg.single_depth == 1:
        pytest.skip("one application of the tied block: its state has no copies to compare")
    state = read_state_dict(case_path(CASE), prefix="state.")
    key = f"model.single_modal_stream.{cfg.single_depth - 1}.linear1.weight"
    state[key] = state[key] + 1e-3
    with torch.device("meta"):
        net = Flowley(cfg, la, lv)
    with pytest.raises(CheckpointError, match="copies differ") as err:
        net.load_official(state, CASE)
    assert "\n" not in str(err.value)


def test_loader_refuses_missing_copies(case):
    meta, _, _ = case
    cfg, la, lv = flowley_config(meta["constructor_kwargs"])
    n = cfg.single_depth
    state = read_state_dict(case_path(CASE), prefix="state.")
    state = {k: v for k, v in state.items() if f".single_modal_stream.{n - 1}." not in k}
    with torch.device("meta"):
        net = Flowley(cfg, la, lv)
    with pytest.raises(CheckpointError, match=f"stored {n - 1} times, expected {n}"):
        net.load_official(state, CASE)


def test_tied_block_is_one_module(case):
    _, _, net = case
    n = net.config.single_depth
    assert len(net.single_modal_stream) == 1
    assert len(net.psca) == n
    # The official fade_scale 1 - l / (N - 1): from 1 at the first application to 0 at the last.
    assert [p.beta for p in net.psca] == pytest.approx([1 - i / max(n - 1, 1) for i in range(n)])


def test_random_state_loads_and_is_tied():
    cfg = dataclasses.replace(
        FlowleyConfig(),
        hidden_dim=32,
        multi_depth=1,
        single_depth=3,
        multi_heads=2,
        single_heads=2,
        text_dim=16,
        video_dim=8,
    )
    state = flowley.random_official_state(cfg, 0)
    assert torch.equal(
        state["model.single_modal_stream.0.cross_weight"],
        state["model.single_modal_stream.2.cross_weight"],
    )
    with torch.device("meta"):
        net = Flowley(cfg, 20, 8)
    net.load_official(state, "random")
    assert not any(t.is_meta for t in net.state_dict().values())
