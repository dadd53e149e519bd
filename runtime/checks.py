"""Checks of a request's values, with the one-line messages every entry point gives (the Python
API, the CLI, and later batch jobs and the server)."""

import math
from collections.abc import Sequence

from .errors import PromptError, UsageError

MAX_PROMPT_CHARS = 1000
MAX_STEPS = 1000
MAX_CFG = 100.0


def check_prompt(prompt: object, what: str = "prompt") -> str:
    """The prompt stripped, or a PromptError saying what is wrong."""
    if not isinstance(prompt, str):
        raise PromptError(f"{what} must be text, not {type(prompt).__name__}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise PromptError(f"{what} is not valid UTF-8 text; pass it as UTF-8") from None
    stripped = prompt.strip()
    if not stripped:
        raise PromptError(f"{what} is empty; describe the sound, e.g. 'dog barking'")
    if len(stripped) > MAX_PROMPT_CHARS:
        raise PromptError(
            f"{what} is {len(stripped)} characters long (at most {MAX_PROMPT_CHARS}); "
            "shorten it to the sound you want"
        )
    return stripped


def check_prompts(prompts: object) -> list[str]:
    """One prompt or a sequence of them -> a non-empty list of checked prompts."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or not prompts:
        raise PromptError("give at least one prompt, e.g. 'dog barking'")
    return [check_prompt(p) for p in prompts]


def check_negative_prompt(prompt: object, variant=None) -> str:
    """ "" (no negative prompt) or a checked prompt; refused for a Flowley `variant`, whose
    unconditional branch is zero features."""
    if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        return ""
    if variant is not None and not variant.takes_negative_prompt:
        raise UsageError(
            f"{variant.name} takes no negative prompt (its unconditional branch is zero features)"
        )
    return check_prompt(prompt, "negative prompt")


def check_options(
    *, steps: int, cfg: float | None, seed: int, duration: float | None, start: float
) -> None:
    """Sampler and time-window options (cfg None: the variant's default); a UsageError naming
    the option and its range."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise UsageError(f"steps {steps!r} is out of range; use 1..{MAX_STEPS}")
    if cfg is not None and (not _number(cfg) or not 0 <= cfg <= MAX_CFG):
        raise UsageError(f"cfg {cfg!r} is out of range; use 0..{MAX_CFG:g}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**64:
        raise UsageError(f"seed {seed!r} must be a 64-bit integer")
    if duration is not None and (not _number(duration) or duration <= 0):
        raise UsageError(f"duration {duration!r} must be a number of seconds > 0")
    if not _number(start) or start < 0:
        raise UsageError(f"start {start!r} must be a number of seconds >= 0")


def _number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
