"""`Pipeline.synthesize` over one window, with its inputs as the golden cases give them."""

import torch
from selva_rt.runtime.pipeline import Pipeline, Synthesis


def one_window(
    pipe: Pipeline,
    text,
    duration: float,
    *,
    sync: torch.Tensor | None = None,
    clip: torch.Tensor | None = None,
    mixture: torch.Tensor | None = None,
    **options,
) -> Synthesis:
    """sync [1, T, 3, 224, 224] in [-1, 1], clip [T_clip, 3, S, S] in [0, 1], mixture [1, S]:
    whichever the variant reads (None: absent, e.g. a query without picture)."""
    given = {"sync": sync, "clip": clip, "mixture": mixture}
    inputs = {k: v for k, v in given.items() if v is not None}
    return pipe.synthesize([inputs], text, pipe.family.plan(duration), **options)


def output(out: Synthesis, name: str) -> torch.Tensor | None:
    """A result by name: noise, latent, audio, or a traced one (sync_features, mel, ...)."""
    return (
        out.trace.get(name) if name in out.trace or not hasattr(out, name) else getattr(out, name)
    )
