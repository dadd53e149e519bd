"""Flow-matching Euler sampler (spec §5): noise at t = 0 to data at t = 1 on a uniform grid."""

from collections.abc import Callable

import torch

from .variants import DEFAULT_STEPS

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (t [B], x [B, N, C]) -> v


def time_grid(steps: int = DEFAULT_STEPS) -> torch.Tensor:
    """Flow times [steps + 1] float32 from 0 to 1, made on the CPU as the reference does."""
    return torch.linspace(0, 1, steps + 1, dtype=torch.float32)


def euler_sample(
    velocity_fn: VelocityFn,
    x0: torch.Tensor,
    steps: int = DEFAULT_STEPS,
    *,
    times: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integrate dx/dt = v(t, x) from x0 [B, N, C] at t = 0 to t = 1 with `steps` Euler steps.

    As the reference: x stays in x0's dtype (the fp32 0-d step size does not promote it), and the
    network sees t_i * ones(B, dtype=x.dtype), so t is rounded to bf16 for a bf16 x.
    `times`: `time_grid(steps)` already on x0's device (host copies cannot be CUDA-graph captured).
    """
    if times is None:
        times = time_grid(steps).to(x0.device)
    dts = times.diff()
    ones = torch.ones(x0.shape[0], dtype=x0.dtype, device=x0.device)
    x = x0
    for i in range(len(dts)):
        x = x + dts[i] * velocity_fn(times[i] * ones, x)
    return x


def euler_loop(
    dit_step: Callable[[torch.Tensor, torch.Tensor, dict, float], torch.Tensor],
    x0: torch.Tensor,
    conditions: dict[str, torch.Tensor],
    steps: int,
    cfg: float,
    progress: Callable[[int], None] | None = None,
    *,
    times: torch.Tensor | None = None,
) -> torch.Tensor:
    """`euler_sample` over a backend's `dit_step(latent, t, conditions, cfg)`, telling
    `progress` of every finished step."""

    def velocity(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        v = dit_step(x, t, conditions, cfg)
        if progress is not None:
            progress(1)
        return v

    return euler_sample(velocity, x0, steps, times=times)
