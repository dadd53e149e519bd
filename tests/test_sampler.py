"""Euler flow sampler: the reference time grid, what the network sees, and dtype behaviour."""

import pytest
import torch
from golden import manifest
from selva_rt.runtime.sampler import euler_sample, time_grid


def test_time_grid_is_the_reference_fp32_grid():
    grid = time_grid(25)
    assert grid.dtype == torch.float32
    assert grid.tolist() == manifest("reference_tables")["euler_time_grid_float32_25_steps"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_network_times_and_state_dtype(dtype):
    seen = []

    def velocity(t, x):
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype == dtype
        seen.append(t[0].item())
        return torch.ones_like(x)

    x0 = torch.zeros(2, 5, 3, dtype=dtype)
    x1 = euler_sample(velocity, x0, 25)
    assert x1.dtype == dtype
    tables = manifest("reference_tables")
    key = (
        "euler_time_grid_as_bf16_network_input"
        if dtype == torch.bfloat16
        else ("euler_time_grid_float32_25_steps")
    )
    assert seen == tables[key][:-1]  # the last evaluation is at t = 0.96

    # x accumulates in its own dtype, one rounding per step of the fp32 step size times v.
    grid = time_grid(25)
    expected = torch.zeros(1, dtype=dtype)  # not 0-d: a 0-d x would be promoted to fp32
    for dt in grid.diff():
        expected = expected + dt * torch.ones(1, dtype=dtype)
    assert torch.equal(x1, expected.expand_as(x1))


def test_linear_flow_reaches_target():
    """For the straight-line flow v = x_target - x0 (as a function of t), Euler is exact."""
    g = torch.Generator().manual_seed(0)
    x0, target = torch.randn(2, 7, 4, generator=g), torch.randn(2, 7, 4, generator=g)
    x1 = euler_sample(lambda t, x: target - x0, x0, 10)
    torch.testing.assert_close(x1, target, rtol=1e-6, atol=1e-6)


def test_precomputed_times_give_the_same_result():
    x0 = torch.randn(1, 4, 2)

    def velocity(t, x):
        return torch.sin(3 * x) + t[:, None, None]

    assert torch.equal(
        euler_sample(velocity, x0, 8), euler_sample(velocity, x0, times=time_grid(8))
    )
