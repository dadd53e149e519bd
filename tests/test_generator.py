"""MM-DiT generator: manifest layout, golden reproduction (official MMAudio code), CFG, loading."""

import pytest
import torch
import torch.nn.functional as F
from golden import assert_close, case_path, generator_config, load_case, manifest
from selva_rt.runtime.errors import CheckpointError, UsageError
from selva_rt.runtime.models.checkpoint import expected_shapes, read_state_dict
from selva_rt.runtime.models.generator import (
    Conditions,
    Generator,
    apply_rope,
    cat_conditions,
    nearest_exact_index,
    random_official_state,
    rope_table,
)
from selva_rt.runtime.sampler import euler_sample
from selva_rt.runtime.variants import VARIANTS

torch.set_num_threads(1)

GOLDEN_CASES = ["gen_small_v1", "gen_small_v2"]
# README tolerances (rel L2, max abs): single passes and the 25-step Euler results.
SINGLE = (1e-4, 1e-3)
EULER = (5e-4, 5e-3)


def manifest_for(variant: str) -> dict:
    size = variant.split("-", 1)[1].replace("-", "_")
    return manifest(f"mmaudio_{size}")


@pytest.mark.parametrize(
    "name",
    [n for n, v in VARIANTS.items() if not (v.random_weights or v.flowley or v.vatt)],
)  # VATT's layouts: tests/test_vatt_variants.py
def test_full_size_layout_matches_manifest(name):
    """MMAudio's manifest; MMAudioSep's differs only in audio_input_proj.0.weight's input
    channels, 2C instead of C (spec SEEDS.md §1.2: C·H·7 more parameters)."""
    variant = VARIANTS[name]
    man = manifest_for(name)
    lengths = variant.sequence_lengths()
    with torch.device("meta"):
        net = Generator(variant.generator, lengths.latent, lengths.clip, lengths.sync)
    shapes = expected_shapes(net)
    expected = {k: tuple(v[0]) for k, v in man["keys"].items()}
    extra = 0
    if variant.separation:
        h, c, k = expected["audio_input_proj.0.weight"]
        expected["audio_input_proj.0.weight"] = (h, 2 * c, k)
        extra = h * c * k
    assert shapes == expected
    params = sum(t.numel() for t in net.state_dict().values())
    print(f"{name}: {params:,} parameters")
    assert params == man["total_parameters"] + extra
    # Non-persistent buffers are rebuilt per duration; at 8 s they have the manifest's shapes.
    buffers = dict(net.named_buffers())
    for key, (shape, _) in man["non_persistent_buffers"].items():
        assert tuple(buffers[key].shape) == tuple(shape), key
    assert set(man["dropped_at_load"]) <= set(man["non_persistent_buffers"])


def golden_generator(case: str) -> tuple[dict, dict, Generator]:
    meta, tensors = load_case(case)
    config, lengths = generator_config(meta["constructor_kwargs"])
    with torch.device("meta"):
        net = Generator(config, *lengths)
    state = read_state_dict(case_path(case), prefix="state.")
    return meta, tensors, net.load_official(state, case).eval()


def check_conditions(case: str, prefix: str, cond: Conditions, tensors: dict) -> None:
    for field, value in cond._asdict().items():
        name = f"{prefix}.{field}"
        assert_close(f"{case}:{name}", value, tensors[f"out.{name}"], *SINGLE)


@pytest.mark.parametrize("case", GOLDEN_CASES)
@torch.inference_mode()
def test_golden(case):
    meta, T, net = golden_generator(case)
    cfg, steps = meta["args"]["cfg_strength"], meta["args"]["num_steps"]
    assert meta["args"]["min_sigma"] == 0
    B = T["in.x0"].shape[0]

    cond = net.preprocess_conditions(T["in.clip_f"], T["in.sync_f"], T["in.text_f"])
    check_conditions(case, "cond", cond, T)
    empty = net.get_empty_conditions(B)
    check_conditions(case, "empty_cond", empty, T)
    neg_empty = net.get_empty_conditions(B, T["in.neg_text_f"])
    check_conditions(case, "neg_empty_cond", neg_empty, T)

    flow = net.predict_flow(T["in.latent"], T["in.t"], cond)
    assert_close(f"{case}:flow", flow, T["out.flow"], *SINGLE)
    t_vec = T["in.t_scalar"] * torch.ones(B, dtype=T["in.latent"].dtype)
    v = net.cfg_velocity(T["in.latent"], t_vec, cond, empty, cfg)
    assert_close(f"{case}:ode_wrapper_flow", v, T["out.ode_wrapper_flow"], *SINGLE)

    for out, uncond in (("x1", empty), ("x1_neg", neg_empty)):
        x1 = euler_sample(
            lambda t, x, u=uncond: net.cfg_velocity(x, t, cond, u, cfg), T["in.x0"], steps
        )
        assert_close(f"{case}:{out}", x1, T[f"out.{out}"], *EULER)
        assert_close(f"{case}:{out}_unnorm", net.unnormalize(x1), T[f"out.{out}_unnorm"], *EULER)


@pytest.mark.parametrize("case", GOLDEN_CASES)
@torch.inference_mode()
def test_batched_cfg_matches_two_pass(case):
    meta, T, net = golden_generator(case)
    cfg, steps = meta["args"]["cfg_strength"], meta["args"]["num_steps"]
    B = T["in.x0"].shape[0]
    cond = net.preprocess_conditions(T["in.clip_f"], T["in.sync_f"], T["in.text_f"])
    uncond = net.get_empty_conditions(B, T["in.neg_text_f"])
    both = cat_conditions(cond, uncond)
    assert both.sync_f.shape[0] == 2 * B
    # The one method the torch backend and the exported dit_conditions graph run.
    features = T["in.clip_f"], T["in.sync_f"], T["in.text_f"], T["in.neg_text_f"]
    for ours, want in zip(net.cfg_conditions(*features), both, strict=True):
        assert torch.equal(ours, want)

    t_vec = T["in.t_scalar"] * torch.ones(B)
    two_pass = net.cfg_velocity(T["in.latent"], t_vec, cond, uncond, cfg)
    batched = net.cfg_velocity_batched(T["in.latent"], t_vec, both, cfg)
    assert_close(f"{case}:batched_vs_two_pass_velocity", batched, two_pass, 1e-5, 1e-4)
    # cfg < 1 is the conditional velocity alone, in both forms.
    v_cond = net.predict_flow(T["in.latent"], t_vec, cond)
    assert torch.equal(net.cfg_velocity(T["in.latent"], t_vec, cond, uncond, 0.5), v_cond)
    assert_close(
        f"{case}:batched_cfg_below_1",
        net.cfg_velocity_batched(T["in.latent"], t_vec, both, 0.5),
        v_cond,
        1e-6,
        1e-5,
    )
    # cfg as a 0-d tensor, as the exported dit_step graph takes it: both halves always run, so
    # the conditional rows come from the doubled batch (kernel rounding, as batched above).
    for strength, want in ((cfg, batched), (0.5, v_cond)):
        got = net.cfg_velocity_batched(T["in.latent"], t_vec, both, torch.tensor(strength))
        assert_close(f"{case}:batched_cfg_tensor_{strength}", got, want, 1e-5, 1e-4)

    x1 = euler_sample(lambda t, x: net.cfg_velocity_batched(x, t, both, cfg), T["in.x0"], steps)
    assert_close(f"{case}:x1_neg(batched)", x1, T["out.x1_neg"], *EULER)


def test_sync_upsampling_index_matches_reference_tables():
    tables = manifest("reference_tables")["nearest_exact"]
    for key, table in tables.items():
        src, dst = map(int, key.split("->"))
        index = nearest_exact_index(src, dst)
        assert index.tolist() == table["indices"], key
        for j, ours, exact in table["exact_rational_mismatches"]:
            assert index[j] == ours != exact
    # ... and with F.interpolate itself, for other durations too.
    for src, dst in [(192, 250), (192, 345), (8, 20), (40, 63), (16, 44), (96, 173)]:
        x = torch.arange(src, dtype=torch.float32)[None, None]
        ref = F.interpolate(x, size=dst, mode="nearest-exact")[0, 0].long()
        assert torch.equal(nearest_exact_index(src, dst), ref), (src, dst)


def tiny_generator(seed: int = 0) -> Generator:
    config = VARIANTS["tiny"].generator
    net = Generator(config, latent_seq_len=20, clip_seq_len=5, sync_seq_len=8)
    return net.load_official(random_official_state(config, seed), "random").eval()


@torch.inference_mode()
def test_update_seq_lengths_rebuilds_tables():
    net = tiny_generator()
    net.update_seq_lengths(63, 16, 40)
    head_dim = net.config.hidden_dim // net.config.num_heads
    assert net.latent_rot.shape == (1, 63, head_dim // 2, 2, 2)
    assert net.clip_rot.shape == (1, 16, head_dim // 2, 2, 2)
    assert torch.equal(net.sync_index, nearest_exact_index(40, 63))
    c = net.config
    cond = net.preprocess_conditions(
        torch.randn(1, 16, c.clip_dim),
        torch.randn(1, 40, c.sync_dim),
        torch.randn(1, c.text_seq_len, c.text_dim),
    )
    assert cond.sync_f.shape == (1, 63, c.hidden_dim)
    assert net.predict_flow(torch.randn(1, 63, c.latent_dim), torch.rand(1), cond).isfinite().all()
    with pytest.raises(UsageError, match="sync features"):
        net.preprocess_conditions(
            cond.clip_f.new_zeros(1, 16, c.clip_dim),
            torch.zeros(1, 48, c.sync_dim),
            torch.zeros(1, c.text_seq_len, c.text_dim),
        )
    with pytest.raises(UsageError, match="latent"):
        net.predict_flow(torch.randn(1, 20, c.latent_dim), torch.rand(1), cond)
    # Tables given as arguments (as the exported graphs take them): the same results, and no
    # check against the module's lengths.
    latent, t = torch.randn(1, 63, c.latent_dim), torch.rand(1)
    tables = rope_table(63, head_dim, 1.0), rope_table(16, head_dim, 63 / 16)
    v = net.predict_flow(latent, t, cond)
    assert torch.equal(net.predict_flow(latent, t, cond, *tables), v)
    net.update_seq_lengths(20, 5, 8)
    assert torch.equal(net.predict_flow(latent, t, cond, *tables), v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_rope_is_bit_identical_to_the_official_product(dtype):
    # The official form: a product with the 2x2 rotations and a sum over the pair (x[2i], x[2i+1]).
    rot = rope_table(37, 16, 63 / 37)
    x = (torch.randn(2, 3, 37, 16, generator=torch.Generator().manual_seed(0)) * 7).to(dtype)
    official = (rot * x.float().unflatten(-1, (-1, 1, 2))).sum(-1).flatten(-2).to(dtype)
    out = apply_rope(x, rot)
    assert out.dtype == dtype
    assert torch.equal(
        out.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
        official.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
    )


@torch.inference_mode()
def test_bf16_cast_follows_reference():
    meta, T, net = golden_generator("gen_small_v1")
    freqs32 = net.t_embed.freqs.clone()
    net.to(torch.bfloat16)
    # RoPE tables stay fp32 (rebuilt after the cast); t_embed.freqs is rounded to bf16.
    assert net.latent_rot.dtype == net.clip_rot.dtype == torch.float32
    assert torch.equal(net.t_embed.freqs, freqs32.bfloat16())
    bf = {k: v.bfloat16() for k, v in T.items() if k.startswith("in.")}
    cond = net.preprocess_conditions(bf["in.clip_f"], bf["in.sync_f"], bf["in.text_f"])
    flow = net.predict_flow(bf["in.latent"], bf["in.t"], cond)
    assert flow.dtype == torch.bfloat16
    assert_close("gen_small_v1:flow(bf16)", flow.float(), T["out.flow"], 2e-2, 0.5)


def test_random_official_state_is_deterministic_and_loads():
    config = VARIANTS["tiny"].generator
    a, b = random_official_state(config, 3), random_official_state(config, 3)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["latent_mean"], random_official_state(config, 4)["latent_mean"])
    net = tiny_generator(3)
    assert torch.isfinite(net.latent_std).all() and (net.latent_std > 0).all()
    x = torch.randn(2, net.latent_seq_len, config.latent_dim)
    torch.testing.assert_close(net.normalize(net.unnormalize(x)), x)


@pytest.mark.parametrize("problem", ["missing", "unexpected", "misshaped"])
def test_strict_loading_rejects_bad_checkpoints(problem):
    config = VARIANTS["tiny"].generator
    state = random_official_state(config, 0)
    key = "joint_blocks.0.latent_block.attn.qkv.weight"
    if problem == "missing":
        del state[key]
    elif problem == "unexpected":
        key = "joint_blocks.0.latent_block.attn.proj.weight"
        state[key] = torch.zeros(1)
    else:
        state[key] = state[key][:-1]
    with torch.device("meta"):
        net = Generator(config, 20, 5, 8)
    with pytest.raises(CheckpointError, match=rf"my_ckpt\.pth.*{problem}.*{key}"):
        net.load_official(state, "my_ckpt.pth")


@torch.inference_mode()
def test_loader_drops_stale_buffers():
    """Older checkpoints carry t_embed.freqs / latent_rot / clip_rot; they are ignored."""
    config = VARIANTS["tiny"].generator
    state = random_official_state(config, 0)
    state |= {
        "t_embed.freqs": torch.zeros(7),
        "latent_rot": torch.zeros(1),
        "clip_rot": torch.zeros(1),
    }
    with torch.device("meta"):
        net = Generator(config, 20, 5, 8)
    net.load_official(state, "old.pth")
    ref = tiny_generator(0)
    for name, buf in ref.named_buffers():
        assert torch.equal(dict(net.named_buffers())[name], buf), name
