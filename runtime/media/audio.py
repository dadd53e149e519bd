"""Audio: the runtime's one resampler, and reading an audio track (the mixture `selva-rt
separate` takes apart).

An audio track is read from `start`, downmixed to mono (the mean of the channels, as the
official MMAudioSep demo) and resampled to the model's rate. Our resampler is not torchaudio's,
so a file at another rate than the model's gives slightly different samples from the official
demo (at the model's rate the samples are the file's).
"""

import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MediaError
from .files import av, existing_file, open_media, why

# Extra input decoded past the end, so the resampler's filter sees real samples there.
RESAMPLE_MARGIN_S = 0.05

# Polyphase windowed-sinc resampler: resampy's `kaiser_best` design (64 zero crossings each
# side, pass band up to 94.76% of the lower Nyquist, Kaiser beta 14.77: about -100 dB stop band).
RESAMPLE_ZEROS = 64
RESAMPLE_ROLLOFF = 0.9475937167399596
RESAMPLE_BETA = 14.769656459379492


def resample(wav: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """wav: [C, T] float32 at orig_rate -> [C, ceil(T * new_rate / orig_rate)] at new_rate.

    Polyphase Kaiser-windowed sinc. With up/down = new/orig reduced (3/1 for 16k -> 48k,
    160/147 for 44.1k -> 48k), output sample q * up + i sits at input position
    q * down + i * down / up; phase i is one FIR of a strided conv1d over the input (zeros
    outside it), so no sample is computed at the up-sampled rate.
    """
    if orig_rate == new_rate:
        return wav
    g = math.gcd(orig_rate, new_rate)
    up, down = new_rate // g, orig_rate // g
    # Low-pass cutoff in cycles per input sample, and the kernel's half-width in input samples.
    cutoff = RESAMPLE_ROLLOFF * min(orig_rate, new_rate) / (2 * orig_rate)
    half = RESAMPLE_ZEROS / (2 * cutoff)
    width = math.ceil(half)
    taps = torch.arange(-width, width + down + 1, dtype=torch.float64)  # j: input offset
    phase = torch.arange(up, dtype=torch.float64)[:, None] * down / up
    tau = phase - taps  # [up, K] distance from the output position to input sample q*down + j
    window = torch.special.i0(RESAMPLE_BETA * torch.sqrt((1 - (tau / half) ** 2).clamp(min=0)))
    window = window / torch.special.i0(torch.tensor(RESAMPLE_BETA, dtype=torch.float64))
    kernel = 2 * cutoff * torch.sinc(2 * cutoff * tau) * window
    kernel = kernel.where(tau.abs() <= half, 0.0).to(wav.dtype)

    channels, length = wav.shape
    out_length = math.ceil(length * up / down)
    blocks = math.ceil(out_length / up)
    right = (blocks - 1) * down + kernel.shape[1] - width - length
    x = F.pad(wav[:, None], (width, max(right, 0)))
    y = F.conv1d(x, kernel[:, None], stride=down)[..., :blocks]  # [C, up, blocks]
    return y.transpose(1, 2).reshape(channels, -1)[:, :out_length]


def read_audio(
    path: str | os.PathLike, sample_rate: int, start: float = 0.0, seconds: float = math.inf
) -> np.ndarray:
    """The first audio stream of `path` from `start` for up to `seconds`, mono float32 at
    `sample_rate` -> [S], S <= round(seconds * sample_rate) (shorter where the file ends).

    Raises MediaError (one line) for a file without audio, an unreadable or damaged one, or
    samples that are not finite.
    """
    path = existing_file(path)
    chunks: list[np.ndarray] = []
    with open_media(path) as container:
        if not container.streams.audio:
            raise MediaError(
                f"{path.name} has no audio track to separate; give the mixture with --mixture FILE"
            )
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        if not rate:
            raise MediaError(f"{path.name}: its audio track has no sample rate")
        # Planar float at the stream's own rate and layout; channels are averaged below.
        to_float = av.AudioResampler(format="fltp", rate=rate)
        end = start + seconds + RESAMPLE_MARGIN_S
        first = None  # time of the first decoded sample
        try:
            if start > 0:
                container.seek(int(start / stream.time_base), stream=stream, backward=True)
            decoded = 0  # samples
            for frame in container.decode(stream):
                if first is None:
                    first = frame.time if frame.time is not None else 0.0
                for out in to_float.resample(frame):
                    chunks.append(out.to_ndarray())
                    decoded += chunks[-1].shape[1]
                if first + decoded / rate >= end:
                    break
            chunks += [out.to_ndarray() for out in to_float.resample(None)]  # flush
        except av.error.FFmpegError as err:
            raise MediaError(f"{path.name}: its audio cannot be decoded ({why(err)})") from None
    if not chunks:
        raise MediaError(f"{path.name} has an audio track but no decodable audio")
    wav = np.concatenate(chunks, axis=1).astype(np.float32).mean(axis=0)  # [C, T] -> mono [T]
    if start > 0:  # from the seek point (a packet boundary) to `start`
        wav = wav[max(0, round((start - first) * rate)) :]
    if not np.isfinite(wav).all():
        raise MediaError(f"{path.name}: the audio holds non-finite samples (NaN or inf)")
    if wav.size == 0:
        raise MediaError(f"{path.name}: its audio ends before {start:.2f} s")
    out = resample(torch.from_numpy(wav)[None], rate, sample_rate)[0].numpy()
    return out[: round(seconds * sample_rate)] if math.isfinite(seconds) else out
