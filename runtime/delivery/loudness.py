"""Loudness and true peak per ITU-R BS.1770-4 and EBU R 128: integrated loudness (gated),
loudness range (EBU Tech 3342), maximum momentary (400 ms) and short-term (3 s) loudness (EBU
Tech 3341), and true peak (4x oversampled). The figures a Broadcast WAV carries and `--json`
reports, and what `--loudness` normalises to.

Channels are weighted 1 (mono and stereo stems): a mono file is one channel, not dual mono, so a
full-scale 997 Hz sine reads -3.01 LUFS mono and 0.00 LUFS as stereo.
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from scipy.signal import sosfilt

ABSOLUTE_GATE = -70.0  # LUFS
RELATIVE_GATE = -10.0  # LU below the absolute-gated loudness: the integrated loudness gate
RANGE_GATE = -20.0  # LU below it: the loudness range gate (Tech 3342)
RANGE_PERCENTILES = (10, 95)
HOP = 0.1  # s between windows: 75% overlap of gating blocks, 10 Hz meters
MOMENTARY = 4  # hops: 400 ms, the gating block and the momentary window
SHORT_TERM = 30  # hops: 3 s
OFFSET = -0.691  # dB: makes a 997 Hz sine read its RMS level per channel

# K-weighting, BS.1770-4 Tables 1 and 2, second-order sections (b0 b1 b2 a0 a1 a2). They are given
# at 48 kHz only, so every signal is measured at 48 kHz (as ffmpeg's ebur128 does): deriving
# coefficients for 16 kHz instead moves a 997 Hz tone by 0.05 LU.
MEASURE_RATE = 48000
K_WEIGHTING = np.array(
    [
        [
            1.53512485958697,
            -2.69169618940638,
            1.19839281085285,
            1.0,
            -1.69065929318241,
            0.73248077421585,
        ],
        [1.0, -2.0, 1.0, 1.0, -1.99004745483398, 0.99007225036621],
    ]
)
TRUE_PEAK_RATE = 4 * MEASURE_RATE  # 4x oversampling of 48 kHz
CHUNK = 10.0  # s of input processed at a time: memory stays bounded for long stems


@dataclass(frozen=True)
class Loudness:
    """The R 128 figures of a signal; -inf where it is silent."""

    integrated: float  # LUFS
    range: float  # LU
    true_peak: float  # dBTP
    max_momentary: float  # LUFS
    max_short_term: float  # LUFS

    def as_dict(self) -> dict[str, float | None]:
        """Rounded to 0.01, None for silence (-inf): for JSON."""
        names = {
            "integrated_lufs": self.integrated,
            "range_lu": self.range,
            "true_peak_dbtp": self.true_peak,
            "max_momentary_lufs": self.max_momentary,
            "max_short_term_lufs": self.max_short_term,
        }
        return {k: round(v, 2) if math.isfinite(v) else None for k, v in names.items()}


def measure(audio: np.ndarray, rate: int) -> Loudness:
    """audio: [C, T] float in [-1, 1] (C = 1 or 2) at `rate` -> its Loudness."""
    x = _as_channels(audio)
    segments, tail = _segment_energies(x, rate)
    blocks = _lufs(_windows(segments, tail, MOMENTARY))
    short = _lufs(_windows(segments, tail, SHORT_TERM))
    return Loudness(
        integrated=_gated(blocks),
        range=_range(short),
        true_peak=_db(true_peak(x, rate)),
        max_momentary=float(blocks.max()),
        max_short_term=float(short.max()),
    )


def integrated(audio: np.ndarray, rate: int) -> float:
    """audio: [C, T] -> integrated loudness in LUFS (-inf for silence)."""
    segments, tail = _segment_energies(_as_channels(audio), rate)
    return _gated(_lufs(_windows(segments, tail, MOMENTARY)))


def true_peak(audio: np.ndarray, rate: int) -> float:
    """audio: [C, T] -> the largest |sample| of the signal oversampled to 192 kHz (4x 48 kHz),
    linear, and never below the sample peak. The oversampling is the runtime's resampler, a
    windowed sinc far sharper than BS.1770-4's 48-tap example filter; like any low-pass it
    drops the top of the band (above 95% of Nyquist), so a tone up there would read below its
    own samples without the floor."""
    x = _as_channels(audio)
    peak = float(np.abs(x).max(initial=0.0))
    for chunk in _resampled(x, rate, TRUE_PEAK_RATE):
        peak = max(peak, float(np.abs(chunk).max()))
    return peak


def normalising_gain(audio: np.ndarray, rate: int, target: float) -> tuple[float, bool]:
    """The gain in dB that brings `audio` ([C, T]) to `target` LUFS integrated, and whether it
    was lowered so that no sample exceeds full scale (a 24-bit file would clip it). A silent
    signal gets 0 dB."""
    level = integrated(audio, rate)
    if not math.isfinite(level):
        return 0.0, False
    gain = target - level
    headroom = -_db(float(np.abs(audio).max()))
    return (headroom, True) if gain > headroom else (gain, False)


def _as_channels(audio: np.ndarray) -> np.ndarray:
    return np.atleast_2d(np.asarray(audio, dtype=np.float32))


def _segment_energies(x: np.ndarray, rate: int) -> tuple[np.ndarray, float]:
    """x: [C, T] at `rate` -> [S] channel-summed energies (sums of squares) of the K-weighted
    signal at 48 kHz in consecutive 100 ms segments, and the energy of the shorter rest."""
    hop = round(HOP * MEASURE_RATE)
    state = np.zeros((len(K_WEIGHTING), x.shape[0], 2))
    rest = np.zeros((x.shape[0], 0))
    segments = []
    for chunk in _resampled(x, rate, MEASURE_RATE):
        y, state = sosfilt(K_WEIGHTING, chunk.astype(np.float64), axis=-1, zi=state)
        y = np.concatenate([rest, y], axis=1)
        whole = y.shape[1] // hop * hop
        segments.append(np.square(y[:, :whole]).reshape(len(y), -1, hop).sum(axis=(0, 2)))
        rest = y[:, whole:]
    return np.concatenate(segments), float(np.square(rest).sum())


def _windows(segments: np.ndarray, tail: float, width: int) -> np.ndarray:
    """[S] segment energies -> [J] mean squares of the windows of `width` segments starting at
    every segment. Only whole windows count; a signal shorter than one window is measured as
    one window with silence after it (what a meter started with the file shows at its end)."""
    if len(segments) < width:
        return np.array([(segments.sum() + tail) / (width * HOP * MEASURE_RATE)])
    sums = np.concatenate([[0.0], np.cumsum(segments)])
    return (sums[width:] - sums[:-width]) / (width * HOP * MEASURE_RATE)


def _resampled(x: np.ndarray, rate: int, new_rate: int) -> Iterator[np.ndarray]:
    """x: [C, T] float32 -> consecutive [C, t] chunks that join into media.resample(x, rate,
    new_rate): each chunk is resampled with enough input either side for the kernel, so the
    result is the same as resampling the whole signal, in bounded memory."""
    from ..media.audio import RESAMPLE_ROLLOFF, RESAMPLE_ZEROS, resample

    g = math.gcd(rate, new_rate)
    up, down = new_rate // g, rate // g
    # Chunk edges on multiples of `down` input samples fall on whole output samples.
    half = RESAMPLE_ZEROS * rate / (RESAMPLE_ROLLOFF * min(rate, new_rate))  # kernel, input samples
    margin = down * (math.ceil(half / down) + 2)
    step = down * max(1, round(CHUNK * rate / down))
    length = x.shape[1]
    for a in range(0, length, step):
        b = min(a + step, length)
        if rate == new_rate:
            yield x[:, a:b]
            continue
        lo, hi = max(0, a - margin), min(length, b + margin)
        y = resample(torch.from_numpy(x[:, lo:hi]), rate, new_rate).numpy()
        yield y[:, (a - lo) * up // down : -(-(b - lo) * up // down)]


def _lufs(power: np.ndarray | float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return OFFSET + 10 * np.log10(np.maximum(power, 0))


def _gated(blocks: np.ndarray) -> float:
    """BS.1770-4 gating of 400 ms block loudnesses -> integrated loudness."""
    blocks = blocks[blocks > ABSOLUTE_GATE]
    if blocks.size == 0:
        return -math.inf
    blocks = blocks[blocks > _power_mean(blocks) + RELATIVE_GATE]
    return _power_mean(blocks)


def _range(short: np.ndarray) -> float:
    """EBU Tech 3342: the spread (10th to 95th percentile) of the gated short-term loudness."""
    short = short[short > ABSOLUTE_GATE]
    if short.size == 0:
        return 0.0
    short = short[short > _power_mean(short) + RANGE_GATE]
    low, high = np.percentile(short, RANGE_PERCENTILES)
    return float(high - low)


def _power_mean(lufs: np.ndarray) -> float:
    """The loudness of the mean power of blocks given in LUFS."""
    return float(10 * np.log10(np.mean(10 ** (lufs / 10))))


def _db(linear: float) -> float:
    return 20 * math.log10(linear) if linear > 0 else -math.inf
