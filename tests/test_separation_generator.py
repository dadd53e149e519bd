"""MMAudioSep generator: the golden cases of the official MMAudioSep, the mixture bias (the
input convolution split by linearity) against the official concatenation, and the
zero-extension oracle."""

import dataclasses

import pytest
import torch
from golden import assert_close, case_path, generator_config, load_case, setting
from selva_rt.runtime.models.checkpoint import read_state_dict
from selva_rt.runtime.models.generator import Generator, cat_conditions, random_official_state
from selva_rt.runtime.sampler import euler_sample

torch.set_num_threads(1)

CASES = ["sep_gen_small_16k", "sep_gen_small_44k_v2"]
SINGLE = (1e-4, 1e-3)
EULER = (5e-4, 5e-3)


def sep_generator(case: str, key: str = "constructor_kwargs") -> tuple[dict, dict, Generator]:
    meta, tensors = load_case(case)
    kwargs = meta[key] if key in meta else meta["constructors"]["net"]["kwargs"]
    config, lengths = generator_config(kwargs, separation=True)
    with torch.device("meta"):
        net = Generator(config, *lengths)
    state = read_state_dict(case_path(case), prefix="state.")
    return meta, tensors, net.load_official(state, case).eval()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", ["x_cond", "mixture_bias"])
@torch.inference_mode()
def test_golden(case, mode):
    """Every output of the case, with the mixture given as the official concatenation (x_cond,
    what reference mode runs) and as the precomputed bias (what fast mode runs)."""
    meta, T, net = sep_generator(case)
    cfg, steps = meta["args"]["cfg_strength"], meta["args"]["num_steps"]
    B = T["in.x0"].shape[0]
    x_cond = T["in.x_cond"]
    mix = {"x_cond": x_cond} if mode == "x_cond" else {"mixture_bias": net.mixture_bias(x_cond)}
    name = f"{case}[{mode}]"

    cond = net.preprocess_conditions(T["in.clip_f"], T["in.sync_f"], T["in.text_f"])
    empty = net.get_empty_conditions(B)
    neg_empty = net.get_empty_conditions(B, T["in.neg_text_f"])
    for prefix, c in (("cond", cond), ("empty_cond", empty)):
        for field, value in c._asdict().items():
            assert_close(f"{name}:{prefix}.{field}", value, T[f"out.{prefix}.{field}"], *SINGLE)
    for field in ("text_f", "text_f_c"):
        got = getattr(neg_empty, field)
        assert_close(f"{name}:neg.{field}", got, T[f"out.neg_empty_cond.{field}"], *SINGLE)

    flow = net.predict_flow(T["in.latent"], T["in.t"], cond, **mix)
    assert_close(f"{name}:flow", flow, T["out.flow"], *SINGLE)
    flow_u = net.predict_flow(T["in.latent"], T["in.t"], empty, **mix)
    assert_close(f"{name}:flow_uncond", flow_u, T["out.flow_uncond"], *SINGLE)
    t_vec = T["in.t_scalar"] * torch.ones(B)
    v = net.cfg_velocity(T["in.latent"], t_vec, cond, empty, cfg, **mix)
    assert_close(f"{name}:ode_wrapper_flow", v, T["out.ode_wrapper_flow"], *SINGLE)

    for out, uncond in (("x1", empty), ("x1_neg", neg_empty)):
        both = cat_conditions(cond, uncond)
        x1 = euler_sample(
            lambda t, x, b=both: net.cfg_velocity_batched(x, t, b, cfg, **mix), T["in.x0"], steps
        )
        assert_close(f"{name}:{out}", x1, T[f"out.{out}"], *EULER)
        assert_close(f"{name}:{out}_unnorm", net.unnormalize(x1), T[f"out.{out}_unnorm"], *EULER)


@torch.inference_mode()
def test_mixture_is_read_second_and_matters():
    """Swapping the halves or dropping the mixture moves the flow far outside the tolerance:
    the golden agreement above could not come from an input conv that ignores the mixture."""
    _, T, net = sep_generator("sep_gen_small_16k")
    cond = net.preprocess_conditions(T["in.clip_f"], T["in.sync_f"], T["in.text_f"])
    ref = T["out.flow"]

    def rel(x):
        return ((x - ref).norm() / ref.norm()).item()

    swapped = net.predict_flow(T["in.x_cond"], T["in.t"], cond, x_cond=T["in.latent"])
    zero = net.predict_flow(T["in.latent"], T["in.t"], cond, x_cond=torch.zeros_like(ref))
    assert rel(swapped) > 0.5 and rel(zero) > 0.5
    with pytest.raises(ValueError, match="x_cond or mixture_bias"):
        net.predict_flow(T["in.latent"], T["in.t"], cond)


@torch.inference_mode()
def test_zero_extension_oracle_golden():
    """The official oracle: MMAudio state widened with zero mixture channels gives MMAudio's flow
    and 25-step result, for the case's mixture; both our mixture paths reproduce it."""
    meta, T, sep = sep_generator("sep_zero_ext_oracle")
    config, lengths = generator_config(meta["constructor_kwargs"])
    state = read_state_dict(case_path("sep_zero_ext_oracle"), prefix="state.")
    state["audio_input_proj.0.weight"] = T["state_mmaudio.audio_input_proj.0.weight"]
    with torch.device("meta"):
        mm = Generator(config, *lengths)
    mm = mm.load_official(state, "sep_zero_ext_oracle (MMAudio)").eval()
    B = T["in.x0"].shape[0]
    # "out.x1_mmaudio = Euler 25 steps CFG 4.5 from in.x0 with ..."
    (euler,) = [p for p in meta["procedure"] if p.startswith("out.x1_mmaudio")]
    steps, cfg = setting(euler, "Euler"), setting(euler, "CFG")
    cm = mm.preprocess_conditions(T["in.clip_f"], T["in.sync_f"], T["in.text_f"])
    flow_mm = mm.predict_flow(T["in.latent"], T["in.t"], cm)
    assert_close("sep_zero_ext_oracle:flow_mmaudio", flow_mm, T["out.flow_mmaudio"], *SINGLE)
    both = cat_conditions(cm, mm.get_empty_conditions(B))
    x1_mm = euler_sample(lambda t, x: mm.cfg_velocity_batched(x, t, both, cfg), T["in.x0"], steps)
    assert_close("sep_zero_ext_oracle:x1_mmaudio", x1_mm, T["out.x1_mmaudio"], *EULER)
    for mix in ({"x_cond": T["in.x_cond"]}, {"mixture_bias": sep.mixture_bias(T["in.x_cond"])}):
        flow = sep.predict_flow(T["in.latent"], T["in.t"], cm, **mix)
        assert_close(f"sep_zero_ext_oracle:flow_sep[{next(iter(mix))}]", flow, flow_mm, 1e-6, 1e-6)
        x1 = euler_sample(lambda t, x, m=mix: sep.cfg_velocity_batched(x, t, both, cfg, **m),
                          T["in.x0"], steps)  # fmt: skip
        assert_close(f"sep_zero_ext_oracle:x1_sep[{next(iter(mix))}]", x1, x1_mm, 1e-6, 1e-6)
        assert_close("sep_zero_ext_oracle:x1_sep_golden", x1, T["out.x1_sep"], *EULER)


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
@torch.inference_mode()
def test_zero_extension_oracle_tiny_any_mixture(v2):
    """Our own oracle at tiny size: a random MMAudio checkpoint widened with zeros separates
    bit-exactly as MMAudio generates, for several unrelated mixtures, through the fast bias."""
    from selva_rt.runtime.variants import get_variant

    base = dataclasses.replace(get_variant("tiny-sep").generator, mixture_dim=0, v2=v2)
    sep_config = dataclasses.replace(base, mixture_dim=base.latent_dim)
    lengths = (63, 16, 40)
    state = random_official_state(base, seed=7)
    mm = Generator(base, *lengths).load_official(state, "random MMAudio").eval()
    w = state["audio_input_proj.0.weight"]
    wide = dict(state, **{"audio_input_proj.0.weight": torch.cat([w, torch.zeros_like(w)], 1)})
    sep = Generator(sep_config, *lengths).load_official(wide, "zero-extended").eval()
    g = torch.Generator().manual_seed(3)
    c = base
    cond = mm.preprocess_conditions(
        torch.randn(1, 16, c.clip_dim, generator=g),
        torch.randn(1, 40, c.sync_dim, generator=g),
        torch.randn(1, 77, c.text_dim, generator=g),
    )
    both = cat_conditions(cond, mm.get_empty_conditions(1))
    x0 = torch.randn(1, 63, c.latent_dim, generator=g)
    x1_mm = euler_sample(lambda t, x: mm.cfg_velocity_batched(x, t, both, 4.5), x0, 25)
    for scale in (0.0, 1.0, 30.0):
        x_cond = scale * torch.randn(1, 63, c.latent_dim, generator=g)
        bias = sep.mixture_bias(x_cond)
        x1 = euler_sample(
            lambda t, x, b=bias: sep.cfg_velocity_batched(x, t, both, 4.5, mixture_bias=b), x0, 25
        )
        assert torch.equal(x1, x1_mm)
