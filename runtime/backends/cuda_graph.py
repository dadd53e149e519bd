"""The whole Euler loop captured once as a CUDA graph and replayed: the one CUDA-graph mechanism of
the torch and TensorRT backends (fast mode on CUDA).

25 steps of a small DiT are launch-bound on a fast GPU: one CFG-batched step is a few hundred
kernel launches of a few microseconds each. Captured once, the 25 steps replay as one graph
with no Python or launch overhead in between.

    graphs = EulerGraphs()
    x1 = graphs.sample(parts.dit_step, x0, conditions, steps, cfg)

Everything the loop reads lives in static buffers that belong to the graph: x0, every
condition tensor, and the flow-time grid, made on the device beforehand (a host-to-device copy
cannot be captured). A call with new inputs of the same shapes copies them into those buffers
and replays; new shapes, dtypes, steps or cfg capture another graph (cfg is a Python float baked
into the captured kernels).

A graph reads its network's weights and tables through raw pointers: pass them as `keep_alive`
so a table the network rebuilds later (a new duration) cannot free memory the graph still reads.
"""

from collections.abc import Callable

import torch

from ..sampler import euler_loop, time_grid

StepFn = Callable[[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], float], torch.Tensor]
WARMUP_RUNS = 2  # lazy cuBLAS / cuDNN initialisation must happen before capture, not inside it


class EulerGraph:
    """One captured Euler loop for fixed shapes, dtypes, steps and cfg.

    step: `dit_step(latent [B, N, E], t [B], conditions, cfg) -> velocity [B, N, E]`.
    keep_alive: tensors the step reads besides its arguments (the network's buffers).
    """

    @torch.inference_mode()
    def __init__(
        self,
        step: StepFn,
        x0: torch.Tensor,
        conditions: dict[str, torch.Tensor],
        steps: int,
        cfg: float,
        keep_alive: tuple[torch.Tensor, ...] = (),
    ):
        if x0.device.type != "cuda":
            raise ValueError("CUDA graphs need CUDA tensors")
        self.keep_alive = keep_alive
        self.x0 = x0.clone()
        self.conditions = {k: v.clone() for k, v in conditions.items()}
        self.times = time_grid(steps).to(x0.device)

        def run() -> torch.Tensor:
            return euler_loop(step, self.x0, self.conditions, steps, cfg, times=self.times)

        side = torch.cuda.Stream(x0.device)
        side.wait_stream(torch.cuda.current_stream(x0.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                run()
        torch.cuda.current_stream(x0.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.x1 = run()

    @torch.inference_mode()
    def __call__(self, x0: torch.Tensor, conditions: dict[str, torch.Tensor]) -> torch.Tensor:
        """x0 [B, N, E] and conditions shaped as at capture -> x1 [B, N, E] (a fresh tensor)."""
        self.x0.copy_(x0)
        for k, v in conditions.items():
            self.conditions[k].copy_(v)
        self.graph.replay()
        return self.x1.clone()  # the static output is overwritten by the next replay


class EulerGraphs:
    """Captured loops by signature; a new duration, batch or cfg captures one more."""

    def __init__(self):
        self.graphs: dict[tuple, EulerGraph] = {}

    def sample(
        self,
        step: StepFn,
        x0: torch.Tensor,
        conditions: dict[str, torch.Tensor],
        steps: int,
        cfg: float,
        keep_alive: tuple[torch.Tensor, ...] = (),
    ) -> torch.Tensor:
        """x1 [B, N, E] from x0 [B, N, E]; captures on the first call with these shapes."""
        key = signature(x0, conditions, steps, cfg)
        if key not in self.graphs:
            self.graphs[key] = EulerGraph(step, x0, conditions, steps, cfg, keep_alive)
        return self.graphs[key](x0, conditions)


def signature(
    x0: torch.Tensor, conditions: dict[str, torch.Tensor], steps: int, cfg: float
) -> tuple:
    """What a captured graph is specialised to."""
    fields = tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(conditions.items()))
    return (tuple(x0.shape), x0.dtype, str(x0.device), fields, steps, float(cfg))
