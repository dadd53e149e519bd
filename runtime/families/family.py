"""The contract every model family meets: what `Pipeline` calls, whatever the model.

A family turns prompts and a clip's windows into audio with its own text handling, conditions,
sampler and decoder, over the named parts of one backend (`backends.Parts`). The pipeline
calls only this contract, in this order, so it never asks which family or backend it runs:

    text = family.encode_text(prompts, negative_prompt)               # per prompt, joined
    features = [family.features(inputs, P, run) for inputs in windows]  # per window, no prompt
    conditions = family.conditions(text, features, layout, run)       # per request
    x0 = family.noise(P, layout, run)
    x1 = family.sample(x0, conditions, layout, steps, cfg, progress, run)
    audio = family.decode(x1, layout, run)                            # [P, samples]

`features` depends on the picture (and mixture) of a window only, never on a prompt, and the
text features of a prompt do not depend on the prompts beside it (`encode_text` is
`join_text` over `encode_prompt`): what a feature cache (runtime/cache.py) keeps, under the
family's `identity`. Randomness comes from `run.rng`, drawn in the official order (a family's
conditions may draw before the noise: MMAudioSep's posterior).
"""

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..backends import Progress
from ..memory import PeakMeter
from ..variants import DEFAULT_DURATION, Variant
from ..windows import Layout


@dataclass(frozen=True)
class Needs:
    """What a window must hold for a family: the pictures (keyword arguments of
    `media.decode_video` and `media.decode_windows`), whether a mixture is read, and the
    trained length in seconds (a request up to it is one window, as the official code runs it)."""

    picture: dict
    mixture: bool = False
    window: float = DEFAULT_DURATION


@dataclass
class Run:
    """One request's shared state: the seeded generator, seconds per part, named intermediate
    results (for tests and benchmarks: `sync_features`, `mel`, `mixture_latent`, ...) and the
    family's request options (e.g. `normalize_mixture_latent`)."""

    device: torch.device
    rng: torch.Generator
    timings: dict[str, float] = field(default_factory=dict)
    trace: dict[str, torch.Tensor] = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    shared: dict = field(default_factory=dict)  # what the windows share (trunk segments)
    windows: list = field(default_factory=list)  # the windows' content digests, as cached
    meter: "PeakMeter | None" = None  # peak memory per part, when measured (benchmarks)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Adds the seconds of the block to timings[name] (CUDA work included); with a meter,
        its peak memory to meter.parts[name]."""
        with self.meter.part(name) if self.meter is not None else nullcontext():
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t0 = time.perf_counter()
            yield
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0


class Family(Protocol):
    """A model family over one backend's parts. Shapes: P prompts, W windows of `layout`.
    `parts` is the backend's parts object the family calls (`backends.Parts` for the flow
    families, `backends.vatt_parts.VattTorchParts` for VATT): opaque to the pipeline."""

    variant: Variant
    parts: object
    device: torch.device
    dtype: torch.dtype
    precision: str  # what the parts compute in: fp32, bf16, fp16, int8
    needs: Needs
    sample_rate: int  # of the waveform `decode` returns
    # Whether requests may share a sampler call (`join_conditions` of several): False where the
    # sampler draws from each request's own generator (VATT's MaskGIT).
    joins_requests: bool

    def plan(self, duration: float) -> Layout:
        """The windows covering `duration` seconds (one up to `needs.window`)."""

    def check(self, mixture: bool) -> None:
        """A one-line UsageError when the request's kind (with or without a mixture to take
        apart) is not what the family does."""

    @property
    def identity(self) -> dict | None:
        """What, besides the inputs, determines `features` and `encode_prompt` (variant,
        precision, the backend's own description: mode, weights): the feature cache's key.
        None: nothing may be reused (e.g. reference mode, the official execution)."""

    def encode_text(self, prompts: Sequence[str], negative_prompt: str = ""):
        """The prompts' text features (opaque to the pipeline; `conditions` reads them):
        `join_text([encode_prompt(p, negative_prompt) for p in prompts])`."""

    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> dict[str, torch.Tensor]:
        """One prompt's text features as named tensors (with the negative prompt's where the
        family reads one): what the cache stores per prompt."""

    def join_text(self, prompts: Sequence[dict[str, torch.Tensor]]):
        """`encode_prompt` results -> the text features `conditions` reads."""

    def features(self, inputs: dict[str, torch.Tensor], prompts: int, run: Run) -> dict:
        """One window's prompt-independent features from its model inputs (`sync`, `clip`
        from `media.Video.model_inputs`, `mixture` [1, S] float32). `prompts` only matters for
        reference modes that repeat the clip per prompt, as the official batch does."""

    def conditions(self, text, features: list[dict], layout: Layout, run: Run) -> dict:
        """The sampler's conditions for every window (rows window-major: window j, prompt p
        is row j * P + p)."""

    def join_conditions(self, conditions: list[dict], rows: list[int]) -> dict:
        """Several requests' conditions (each for `rows` sampler rows) as one batch, rows in
        request order: what lets the sampler and decoder run several jobs at once."""

    def noise(self, prompts: int, layout: Layout, run: Run) -> torch.Tensor:
        """The sampler's start, the same for every prompt (a stem does not depend on which
        prompts share the request)."""

    def sample(
        self,
        x0: torch.Tensor,
        conditions: dict,
        layout: Layout,
        steps: int,
        cfg: float,
        progress: Progress | None,
        run: Run,
    ) -> torch.Tensor:
        """x0 -> the generated latent or tokens of the whole request."""

    def decode(self, x1: torch.Tensor, layout: Layout, run: Run) -> torch.Tensor:
        """The sampler's output -> waveform [P, samples] at `sample_rate`."""
