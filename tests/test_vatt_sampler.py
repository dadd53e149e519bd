"""The MaskGIT sampler against the golden `vatt_sampler_small` case (the official
generate_audio_sample, seeded): step replay from the recorded logits and RNG state, the network's
CFG logits at every step, whole runs, and batches of prompts against their single-prompt runs."""

import dataclasses

import pytest
import torch
from golden import assert_close, load_case
from selva_rt.runtime import maskgit
from vatt_cases import audio_network, sampler_config

CASE = "vatt_sampler_small"


@pytest.fixture(scope="module")
def case():
    meta, t = load_case(CASE)
    # The case's network: the weights of vatt_audio_small of the same set (golden README).
    _, net = audio_network("vatt_audio_small")
    return meta, t, net


def steps(t: dict) -> list[int]:
    return sorted({int(k.split(".")[1][4:]) for k in t if k.startswith("out.step")})


def step_tensors(t: dict, s: int) -> dict:
    prefix = f"out.step{s:02d}."
    return {k[len(prefix) :]: v for k, v in t.items() if k.startswith(prefix)}


def test_step_replay(case):
    """Given the official CFG logits and RNG state, a step draws the same samples and Gumbel
    noise and decides the same mask and next state, bit for bit. The softmax probabilities
    (selected_probs, hence confidence) may differ by a few float32 ulps: the vectorised exp of
    the torch build that made the case (2.14.1) and of this one are not the same code (measured
    here with torch 2.13: 3.2e-7 relative, on the official ops as well as on these)."""
    meta, t, _ = case
    config = sampler_config(meta)
    full = [s for s in steps(t) if "cfg_logits" in step_tensors(t, s)]
    assert full == meta["sampler_args"]["full_logit_steps"]
    for s in full:
        rec = step_tensors(t, s)
        gen = torch.Generator().manual_seed(0)
        gen.set_state(rec["rng_state"])
        out = maskgit.maskgit_step(
            rec["cfg_logits"].clone(), rec["tokens_in"], s, meta["mask_token"], [gen], config
        )
        for name, key in (
            ("sampled_raw", "sampled_raw"),
            ("num_to_mask", "num_to_mask"),
            ("temperature", "mask_temperature_eff"),
            ("gumbel", "gumbel_noise"),
            ("mask", "mask"),
        ):
            assert torch.equal(getattr(out, name), rec[key]), f"step {s}: {name} differs"
        following = step_tensors(t, s + 1).get("tokens_in", t["out.tokens"])
        assert torch.equal(out.tokens, following), f"step {s}: next token state differs"
        for name, key in (("selected_probs", "selected_probs"), ("confidence", "confidence")):
            a, b = getattr(out, name), rec[key]
            finite = torch.isfinite(b)
            assert torch.equal(torch.isfinite(a), finite)
            a, b = a[finite], b[finite]
            # confidence = log p + T * gumbel: the ulps of p, at the scale of the sum.
            atol = 1e-6 * b.abs().max().item() if name == "confidence" else 0.0
            assert torch.allclose(a, b, rtol=1e-6, atol=atol), f"step {s}: {name}"


@torch.no_grad()
def test_network_logits_every_step(case):
    """The CFG logits of the network from each step's official token state (32 rows kept); the
    16 states run as one batch."""
    meta, t, net = case
    config = sampler_config(meta)
    rows = t["in.logit_rows"]
    recs = [step_tensors(t, s) for s in steps(t)]
    tokens = torch.cat([rec["tokens_in"] for rec in recs])
    b = len(recs)
    cond, uncond = net(tokens, t["in.cond"].expand(b, -1, -1), t["in.pad_mask"].expand(b, -1))
    logits = maskgit.cfg_logits(cond, uncond, config.cfg)
    for i, rec in enumerate(recs):
        got = logits[i : i + 1]
        assert_close(f"{CASE}.cfg_logits_rows", got[:, rows], rec["cfg_logits_rows"], 1e-4, 5e-3)
        if "cfg_logits" in rec:
            assert_close(f"{CASE}.cfg_logits", got, rec["cfg_logits"], 1e-4, 5e-3)


@torch.no_grad()
def test_whole_run_tokens(case):
    """torch.manual_seed(seed) + generate_audio_sample: at least 99.9 % of the 2000 tokens equal
    (golden README "token flips"); the count is recorded."""
    meta, t, net = case
    config = sampler_config(meta)
    k, frames = t["out.tokens"].shape[1:]
    tokens = maskgit.generate(
        lambda x: net(x, t["in.cond"], t["in.pad_mask"]),
        (k, frames),
        meta["mask_token"],
        maskgit.generators_for([int(t["in.seed"])]),
        config,
    )
    equal = (tokens == t["out.tokens"]).sum().item()
    print(f"{CASE}: {equal} of {tokens.numel()} tokens equal")
    assert equal >= 0.999 * tokens.numel()


@torch.no_grad()
def test_prompts_batch_like_single_runs(case):
    """Three prompts, two with one condition length and one shorter, each with its own seed:
    batched (CFG pairs and equal lengths in one forward), every prompt's tokens are those of its
    own single-prompt run. (6 steps over 100 frames: the property holds at every step and the
    network takes any T <= audio_seq_len.)"""
    meta, t, net = case
    config = dataclasses.replace(sampler_config(meta), steps=6)
    k, frames = t["out.tokens"].shape[1], 100
    g = torch.Generator().manual_seed(5)
    cond, mask = t["in.cond"][0], t["in.pad_mask"][0]
    conds = [cond, cond + 0.5 * torch.randn(cond.shape, generator=g), cond[:-3]]
    masks = [mask, mask, mask[:-3]]
    seeds = [11, 12, 13]
    batched = maskgit.generate(
        maskgit.grouped_logits(net, conds, masks),
        (k, frames),
        meta["mask_token"],
        maskgit.generators_for(seeds),
        config,
    )
    for p, seed in enumerate(seeds):
        single = maskgit.generate(
            lambda x, p=p: net(x, conds[p][None], masks[p][None]),
            (k, frames),
            meta["mask_token"],
            maskgit.generators_for([seed]),
            config,
        )
        assert torch.equal(batched[p : p + 1], single), f"prompt {p} differs from its own run"
    assert not torch.equal(batched[0], batched[1])


@torch.no_grad()
def test_generation_from_a_partial_state(case):
    """Starting from a state whose unmasked slots are given (e.g. tokens kept from an
    overlapping window), those slots survive every step and the schedule counts the MASK
    slots of the start, as the official code counts num_mask_tokens_at_start."""
    meta, t, net = case
    config = dataclasses.replace(sampler_config(meta), steps=4)
    mask_id = meta["mask_token"]
    k, frames = t["out.tokens"].shape[1], 60
    g = torch.Generator().manual_seed(3)
    start = torch.randint(0, mask_id, (1, k, frames), generator=g)
    start[:, :, frames // 3 :] = mask_id
    masked = int((start == mask_id).sum())
    logits_fn = lambda x: net(x, t["in.cond"], t["in.pad_mask"])  # noqa: E731
    tokens = maskgit.generate(
        logits_fn, (k, frames), mask_id, maskgit.generators_for([1]), config, tokens=start
    )
    kept = start != mask_id
    assert torch.equal(tokens[kept], start[kept]) and bool((tokens != mask_id).all())
    cond, uncond = logits_fn(start)
    step = maskgit.maskgit_step(
        maskgit.cfg_logits(cond, uncond, config.cfg),
        start,
        0,
        mask_id,
        maskgit.generators_for([1]),
        config,
        torch.tensor([masked]),
    )
    gamma = torch.tensor(1 / config.steps * torch.pi / 2).cos()
    assert step.num_to_mask.item() == int(torch.floor(gamma * masked))
    assert int(step.mask.sum()) == step.num_to_mask.item()
