"""Clips longer than the trained 8 s: overlapping windows denoised in lockstep.

    layout = plan_windows(65.0, variant.audio)        # where each 8 s window sits
    x1 = sample_windows(parts, x0, conditions, layout, steps, cfg)   # one latent for the clip
    audio = decode_windows(parts, x1, layout)         # [P, samples]

Every window has the same length (the clip's length minus a whole number of 0.32 s sync hops,
so between 7.68 and 8 s: the last window ends where the picture ends) and starts on the 0.32 s
sync-segment grid, which is also the latent grid at 16 kHz (10 latent frames); at 44.1 kHz a
window's latent starts on the nearest latent frame (the last window's on the one that ends it
with the stem: within one latent frame, 23 ms). Equal shapes let all windows run as one batch of
rows through the same parts.

The seam method (chosen by measurement, see benchmarks/seams.py): the clip has one latent. At
every Euler step each window's velocity is computed on its slice of that latent, and the clip's
velocity on a latent frame is the average of the windows covering it, weighted by linear ramps
across each overlap; the one latent then takes the step. Overlapping windows thus see the same
latent at every step and the result is one trajectory, not a splice. The decoder (whose VAE
attends over its whole input) runs per window on exactly the window's latent, as trained, and the
waveforms are joined with the same amplitude-complementary ramps (the overlapping audio comes
from the same latent, so it is coherent: an equal-power fade would lift it by up to 3 dB).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import torch

from .backends import Parts, Progress
from .sampler import time_grid
from .variants import (
    DEFAULT_DURATION,
    SYNC_FPS,
    SYNC_HOP,
    WINDOW_OVERLAP,
    AudioConfig,
    sequence_lengths,
)

# Rows (window x prompt) per network call: bounds the activations of long clips, whatever
# their length; 4 is also the most rows TensorRT engines take by default (export/plan.py).
WINDOW_ROWS = 4


@dataclass(frozen=True)
class Layout:
    """Where the windows of a clip sit. Frames count 25 fps sync frames from the clip's start;
    latent offsets count latent frames of the whole stem."""

    duration: float  # seconds of picture covered
    window: float  # seconds per window, the same for all
    frames: tuple[int, ...]  # first sync frame of each window, a multiple of SYNC_HOP
    offsets: tuple[int, ...]  # first latent frame of each window
    latent: int  # latent frames per window
    total: int  # latent frames of the whole stem

    @property
    def starts(self) -> tuple[float, ...]:
        """Each window's start in seconds from the clip's start."""
        return tuple(f / SYNC_FPS for f in self.frames)

    def __len__(self) -> int:
        return len(self.frames)


def plan_windows(
    duration: float,
    audio: AudioConfig,
    window: float = DEFAULT_DURATION,
    overlap: float = WINDOW_OVERLAP,
) -> Layout:
    """The windows covering `duration` seconds: one when it fits in `window`, else the fewest
    windows overlapping by at least `overlap` seconds, spread evenly on the sync-segment grid."""
    latent_rate = Fraction(audio.sample_rate, 2 * audio.hop)  # latent frames per second
    if duration <= window:
        n = sequence_lengths(duration, audio).latent
        return Layout(duration, duration, (0,), (0,), n, n)
    grid = SYNC_HOP / SYNC_FPS
    hops = math.ceil((duration - window) / grid - 1e-9)  # grid steps to the last window's start
    last = hops * SYNC_HOP
    length = _window_length(duration, last)
    max_hop = int((length - overlap) * SYNC_FPS + 1e-9) // SYNC_HOP  # in grid steps
    count = math.ceil(hops / max_hop) + 1
    frames = tuple(SYNC_HOP * round(j * hops / (count - 1)) for j in range(count))
    n = sequence_lengths(length, audio).latent
    total = math.ceil(duration * audio.sample_rate / audio.hop / 2)  # as one window would have
    # The nearest latent frame to each window's start; the last window ends with the stem (they
    # agree at 16 kHz, where 0.32 s is 10 latent frames).
    offsets = tuple(round(f * latent_rate / SYNC_FPS) for f in frames[:-1]) + (total - n,)
    return Layout(duration, length, frames, offsets, n, total)


def plan_fixed_windows(duration: float, window: float, rate: int, overlap: float) -> Layout:
    """Windows of exactly `window` seconds, for a model trained on that length only (VATT: 10 s
    of 50 Hz tokens): one for a request up to `window` (a shorter picture is filled in by the
    family), else the fewest windows overlapping by at least `overlap` seconds, spread evenly
    on the 25 fps frame grid, the last one ending at the first frame boundary at or after the
    picture's end. Offsets, `latent` and `total` count the model's frames (`rate` per second, a
    whole number per 25 fps frame)."""
    per_frame = Fraction(rate, SYNC_FPS)
    if per_frame.denominator != 1:
        raise ValueError(f"{rate} frames per second is not a whole number per sync frame")
    n = round(window * rate)
    if duration <= window:
        return Layout(duration, window, (0,), (0,), n, n)
    length = round(window * SYNC_FPS)  # sync frames per window
    last = math.ceil(duration * SYNC_FPS - 1e-9) - length  # the last window's first frame
    max_hop = int((window - overlap) * SYNC_FPS + 1e-9)
    count = math.ceil(last / max_hop) + 1
    frames = tuple(round(j * last / (count - 1)) for j in range(count))
    offsets = tuple(int(f * per_frame) for f in frames)
    return Layout(duration, window, frames, offsets, n, offsets[-1] + n)


def _window_length(duration: float, last: int) -> float:
    """duration - last / 25 as a float whose 25 fps frame count is exactly the clip's minus
    `last` (the plain difference can land an ulp below a whole frame)."""
    length = duration - last / SYNC_FPS
    want = int(SYNC_FPS * duration) - last
    while int(SYNC_FPS * length) < want:
        length = math.nextafter(length, math.inf)
    return length


def blend_weights(starts: tuple[int, ...], length: int) -> torch.Tensor:
    """[W, length] float64 weights of windows of `length` starting at `starts` on a line: 1
    inside a window, linear ramps across each overlap, summing to 1 everywhere."""
    return torch.stack([window_weights(starts, length, j) for j in range(len(starts))])


def window_weights(starts: tuple[int, ...], length: int, j: int) -> torch.Tensor:
    """Window j's row of `blend_weights`, from its neighbours alone (memory of one window)."""
    own = _ramp(starts, length, j)
    cover = own.clone()
    for k in range(len(starts)):
        shift = starts[k] - starts[j]
        if k != j and abs(shift) < length:
            ramp = _ramp(starts, length, k)
            if shift > 0:
                cover[shift:] += ramp[: length - shift]
            else:
                cover[: length + shift] += ramp[-shift:]
    return own / cover


def _ramp(starts: tuple[int, ...], length: int, j: int) -> torch.Tensor:
    """Window j's weights before normalising: linear up across the overlap with the previous
    window, down across the overlap with the next, 1 between (item centres at i + 0.5)."""
    i = torch.arange(length, dtype=torch.float64) + 0.5
    w = torch.ones(length, dtype=torch.float64)
    if j > 0 and (up := starts[j - 1] + length - starts[j]) > 0:
        w = torch.minimum(w, i / up)
    if j + 1 < len(starts) and (down := starts[j] + length - starts[j + 1]) > 0:
        w = torch.minimum(w, (length - i) / down)
    return w


def _index(starts: tuple[int, ...], length: int) -> torch.Tensor:
    """[W, length] positions of each window's items on the whole line."""
    return torch.tensor(starts)[:, None] + torch.arange(length)


def window_rows(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """x [P, total, E] -> the windows' slices [W*P, latent, E], window-major (row j*P + p)."""
    rows = x[:, _index(layout.offsets, layout.latent).to(x.device)]  # [P, W, n, E]
    return rows.transpose(0, 1).reshape(-1, layout.latent, x.shape[-1])


def _row_chunks(rows: int, chunk: int) -> list[slice]:
    return [slice(r, min(r + chunk, rows)) for r in range(0, rows, chunk)]


def sample_windows(
    parts: Parts,
    x0: torch.Tensor,
    conditions: dict[str, torch.Tensor],
    layout: Layout,
    steps: int,
    cfg: float,
    progress: Progress | None = None,
    *,
    rows: int = WINDOW_ROWS,
) -> torch.Tensor:
    """Euler from the clip's noise x0 [P, total, E] to its latent x1 [P, total, E], all windows
    in lockstep (see the module docstring).

    conditions: from `parts.dit_conditions` over W*P rows, window-major (row j*P + p is window
    j and prompt p), conditional rows then unconditional ([2WP, ...])."""
    return _lockstep(
        lambda x, t, c: parts.dit_step(x, t, c, cfg), x0, conditions, layout, steps, progress, rows
    )


def _lockstep(
    velocity: Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor],
    x0: torch.Tensor,
    conditions: dict[str, torch.Tensor],
    layout: Layout,
    steps: int,
    progress: Progress | None,
    rows: int,
) -> torch.Tensor:
    prompts, total, channels = x0.shape
    n_rows = len(layout) * prompts
    chunks = _row_chunks(n_rows, rows)
    cond_chunks = [  # each chunk's conditional rows, then its unconditional rows
        {k: torch.cat([v[c], v[n_rows + c.start : n_rows + c.stop]]) for k, v in conditions.items()}
        for c in chunks
    ]
    weights = blend_weights(layout.offsets, layout.latent)
    weights = weights.to(x0.device, torch.float32)[:, None, :, None]  # [W, 1, n, 1]
    index = _index(layout.offsets, layout.latent).flatten().to(x0.device)
    times = time_grid(steps).to(x0.device)
    dts = times.diff()
    x = x0
    for i in range(steps):
        xs = window_rows(x, layout)
        t = times[i] * torch.ones(n_rows, dtype=x.dtype, device=x.device)
        v = torch.cat(
            [velocity(xs[c], t[c], cc) for c, cc in zip(chunks, cond_chunks, strict=True)]
        )
        v = v.view(len(layout), prompts, layout.latent, channels).float() * weights
        blended = torch.zeros(prompts, total, channels, device=x.device)
        blended.index_add_(1, index, v.transpose(0, 1).reshape(prompts, -1, channels))
        x = x + dts[i] * blended.to(x.dtype)
        if progress is not None:
            progress(1)
    return x


def decode_windows(
    parts: Parts, x1: torch.Tensor, layout: Layout, *, rows: int = WINDOW_ROWS
) -> torch.Tensor:
    """x1 [P, total, E] -> waveform [P, total * samples per latent frame] float32: each window
    decoded on its own latent, joined with complementary linear ramps across the overlaps."""
    prompts = x1.shape[0]
    xs = window_rows(x1, layout)
    audio = None
    for c in _row_chunks(xs.shape[0], rows):
        _, wav = parts.decoder(xs[c])  # [r, samples per window]
        length = wav.shape[1]
        if audio is None:
            per_frame = length // layout.latent
            starts = tuple(o * per_frame for o in layout.offsets)
            audio = torch.zeros(prompts, layout.total * per_frame)
        for r in range(c.start, c.stop):
            window, prompt = divmod(r, prompts)
            weights = window_weights(starts, length, window).float()
            s = starts[window]
            audio[prompt, s : s + length] += wav[r - c.start].float().cpu() * weights
    return audio
