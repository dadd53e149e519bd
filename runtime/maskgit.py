"""MaskGIT sampling of VATT's Encodec tokens: the official `generate_audio_sample`, batched.

Each step (golden README "Sampler, precisely"): the network gives cond and uncond logits for every
slot; CFG `u + (c - u) * cfg`; the logits are laid out codebook-major (slot n = k * T + t); top-k
(ties at the k-th value survive), softmax, one multinomial sample per slot; the token state is
laid out time-major (slot n = K * t + c) and the two layouts are paired slot by slot, as the
official code does and the weights learned; still-masked slots take their sample and its
probability as confidence, fixed slots keep their token with confidence +inf; the
`num_to_mask` least confident (Gumbel-noised log-probability, temperature
mask_temperature * (1 - r)) go back to MASK, on a cosine schedule.

Random draws: per step, the multinomial ((K*T, V) exponentials: every entry, masked or not), then
(K*T,) uniforms for the Gumbel noise, exactly as the official code draws them from the global CPU
generator. Here every prompt has its own `torch.Generator`, so a prompt's tokens are those of its
own single-prompt run whatever else is in the batch; a generator seeded with s gives the stream
`torch.manual_seed(s)` gives the official code. The draws happen on the generators' device (the
CPU for parity with the official stream; logits are moved there).

Prompts whose conditions differ in length run as separate network batches (`grouped_logits`), so
each prompt's logits are its own run's.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .variants import MaskGitConfig

# tokens [B, K, T] int64 -> (cond logits, uncond logits), each [B, K, T, V]
LogitsFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Step:
    """Everything one step decided (B prompts, N = K * T slots)."""

    sampled_raw: torch.Tensor  # [B, N] int64: the sample of each codebook-major logit slot
    selected_probs: torch.Tensor  # [B, N] float32: its probability where still masked, else inf
    num_to_mask: torch.Tensor  # [B, 1] int64
    temperature: torch.Tensor  # [B] float32: mask_temperature * (1 - r)
    gumbel: torch.Tensor  # [B, N] float32
    confidence: torch.Tensor  # [B, N] float32
    mask: torch.Tensor  # [B, N] bool, time-major: slots that go back to MASK
    tokens: torch.Tensor  # [B, K, T] int64: the next token state (the result after the last step)


def cfg_logits(cond: torch.Tensor, uncond: torch.Tensor, cfg: float) -> torch.Tensor:
    """cond, uncond [B, K, T, V] -> [B, K * T, V] float32, codebook-major: u + (c - u) * cfg."""
    logits = uncond.float() + (cond.float() - uncond.float()) * cfg
    return logits.flatten(1, 2)


def _draw(generators: Sequence[torch.Generator], fn: Callable) -> torch.Tensor:
    """Stack fn(b, generator) over the prompts, each from its own generator."""
    return torch.stack([fn(b, g) for b, g in enumerate(generators)])


def maskgit_step(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    step: int,
    mask_id: int,
    generators: Sequence[torch.Generator],
    config: MaskGitConfig,
    at_start: torch.Tensor | None = None,
) -> Step:
    """One official sampling step. logits [B, K*T, V] float32 codebook-major (CFG applied; the
    top-k filter writes into it), tokens [B, K, T] int64 (mask_id = MASK); one generator per
    prompt, on the device of logits and tokens. at_start [B] int64: the MASK slots of the
    state generation started from (default K*T: all)."""
    b, k, t = tokens.shape
    if at_start is None:
        at_start = torch.full((b,), k * t, device=logits.device)
    r = torch.tensor((step + 1) / config.steps, device=logits.device).repeat(b)  # float32
    top = logits.topk(config.top_k).values
    logits[logits < top[..., -1:]] = -math.inf
    temperature = config.sampling_temperature
    probs = (logits / temperature if temperature > 0 else logits).softmax(-1)
    sampled_raw = _draw(generators, lambda i, g: probs[i].multinomial(1, generator=g)[:, 0])
    p = probs.take_along_dim(sampled_raw[..., None], -1)[..., 0]

    flat = tokens.transpose(1, 2).reshape(b, k * t)  # time-major: slot n = K * t + c
    masked = flat == mask_id
    sampled = torch.where(masked, sampled_raw, flat)
    selected = torch.where(masked, p, math.inf)
    gamma = (r * math.pi / 2).cos().clamp(1e-10, 1.0)
    num = torch.floor(gamma * at_start).unsqueeze(1).long()
    if step != config.steps - 1:
        num = torch.minimum(masked.sum(-1, keepdim=True) - 1, num).clamp_min(1)
    mask_temperature = config.mask_temperature * (1 - r)
    uniform = _draw(
        generators, lambda i, g: torch.zeros_like(selected[i]).uniform_(1e-20, 1, generator=g)
    )
    gumbel = -torch.log(-torch.log(uniform))
    confidence = torch.log(selected) + mask_temperature.unsqueeze(-1) * gumbel
    cut = confidence.sort(-1).values.take_along_dim(num, -1)
    mask = confidence < cut
    state = sampled if step == config.steps - 1 else torch.where(mask, mask_id, sampled)
    return Step(
        sampled_raw=sampled_raw,
        selected_probs=selected,
        num_to_mask=num,
        temperature=mask_temperature,
        gumbel=gumbel,
        confidence=confidence,
        mask=mask,
        tokens=state.view(b, t, k).transpose(1, 2).contiguous(),
    )


def generate(
    logits_fn: LogitsFn,
    shape: tuple[int, int],
    mask_id: int,
    generators: Sequence[torch.Generator],
    config: MaskGitConfig,
    progress: Callable[[int], None] | None = None,
    tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample tokens [B, K, T] int64 (B = len(generators), shape = (K, T)) with `config.steps`
    steps, from all-MASK or from `tokens` [B, K, T] (its non-MASK slots are kept, and the
    schedule counts the MASK slots it starts with, as the official code does). `logits_fn`
    gets the token state on the generators' device; `progress` is told of every step."""
    device = generators[0].device
    if tokens is None:
        tokens = torch.full((len(generators), *shape), mask_id, dtype=torch.long, device=device)
    tokens = tokens.to(device)
    at_start = (tokens == mask_id).flatten(1).sum(1)
    for step in range(config.steps):
        cond, uncond = logits_fn(tokens)
        logits = cfg_logits(cond, uncond, config.cfg).to(device)
        tokens = maskgit_step(logits, tokens, step, mask_id, generators, config, at_start).tokens
        if progress is not None:
            progress(1)
    return tokens


def generators_for(seeds: Sequence[int], device: torch.device | str = "cpu") -> list:
    """One generator per prompt, each seeded as `torch.manual_seed(seed)` seeds the official
    global generator."""
    return [torch.Generator(device).manual_seed(s) for s in seeds]


def grouped_logits(
    forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple],
    conds: Sequence[torch.Tensor],
    pad_masks: Sequence[torch.Tensor],
) -> LogitsFn:
    """A LogitsFn over prompts whose conditions (conds[p] [Nc_p, E], pad_masks[p] [Nc_p]) may
    differ in length: prompts of one length run as one batch of `forward(tokens, cond,
    pad_mask)` (VattAudio.forward), each length separately."""
    groups: dict[int, list[int]] = {}
    for p, cond in enumerate(conds):
        groups.setdefault(cond.shape[0], []).append(p)
    batches = [
        (
            index,
            torch.stack([conds[p] for p in index]),
            torch.stack([pad_masks[p] for p in index]),
        )
        for index in groups.values()
    ]

    def logits_fn(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cond_out: list = [None] * len(conds)
        uncond_out: list = [None] * len(conds)
        for index, cond, mask in batches:
            c, u = forward(tokens[index].to(cond.device), cond, mask)
            for j, p in enumerate(index):
                cond_out[p], uncond_out[p] = c[j], u[j]
        return torch.stack(cond_out), torch.stack(uncond_out)

    return logits_fn
