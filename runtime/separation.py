"""Separation (MMAudioSep): pull one sound out of a clip's own audio, by text and/or picture.

    pipe = Pipeline.from_pretrained("mmaudiosep-large-44k")
    result = pipe.separate("clip.mp4", ["dog barking"])          # mixture = the clip's audio
    result = pipe.separate("street.wav", ["car horn"])           # text-only query
    result = pipe.separate("clip.mp4", ["dog"], mixture="production_sound.wav")

The mixture is read from `start` for the window (the picture's length for a clip, `duration`
for an audio file), downmixed to mono (the mean of the channels, as the official demo) and
resampled to the variant's rate. The official demo truncates the mixture to the latent grid
and asserts when it is shorter; here a shorter mixture is zero-padded and the stems are cut
back to its length. Our resampler is not torchaudio's, so a mixture at another rate than the
variant's gives slightly different samples from the official demo (at the variant's rate the
samples are the file's).
"""

import os

import av
import numpy as np
import torch

from . import media
from .errors import MediaError, UsageError
from .variants import VARIANTS

# Extra input decoded past the window, so the resampler's filter sees real samples at the end.
RESAMPLE_MARGIN_S = 0.05


def has_video(path: str | os.PathLike) -> bool:
    """Whether the file has a real video stream (cover art does not count)."""
    path = media._existing_file(path)
    with media._open_media(path) as container:
        try:
            media._video_stream(container, path)
        except MediaError:
            return False
    return True


def read_mixture(
    path: str | os.PathLike, sample_rate: int, start: float, seconds: float
) -> np.ndarray:
    """The first audio stream of `path` from `start` for up to `seconds`, mono float32 at
    `sample_rate` -> [S], S <= round(seconds * sample_rate) (shorter where the file ends).

    Raises MediaError (one line) for a file without audio, an unreadable or damaged one, or
    samples that are not finite.
    """
    path = media._existing_file(path)
    chunks: list[np.ndarray] = []
    with media._open_media(path) as container:
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
            raise MediaError(
                f"{path.name}: its audio cannot be decoded ({media._why(err)})"
            ) from None
    if not chunks:
        raise MediaError(f"{path.name} has an audio track but no decodable audio")
    wav = np.concatenate(chunks, axis=1).astype(np.float32).mean(axis=0)  # [C, T] -> mono [T]
    if start > 0:  # from the seek point (a packet boundary) to `start`
        wav = wav[max(0, round((start - first) * rate)) :]
    if not np.isfinite(wav).all():
        raise MediaError(f"{path.name}: the audio holds non-finite samples (NaN or inf)")
    if wav.size == 0:
        raise MediaError(f"{path.name}: its audio ends before {start:.2f} s")
    out = media.resample(torch.from_numpy(wav)[None], rate, sample_rate)[0].numpy()
    return out[: round(seconds * sample_rate)]


def fit_to_window(wav: np.ndarray, samples: int) -> torch.Tensor:
    """mono [S'] -> [1, samples] float32: zero-padded (or cut) to the model's window."""
    out = torch.zeros(1, samples)
    n = min(samples, wav.shape[0])
    out[0, :n] = torch.from_numpy(wav[:n])
    return out


def separate(
    pipe,
    source: str | os.PathLike,
    prompts: list[str],
    *,
    mixture: str | os.PathLike | None,
    video: bool,
    negative_prompt: str,
    seed: int,
    steps: int,
    cfg: float,
    duration: float,
    start: float,
    progress: bool,
    normalize_mixture_latent: bool,
):
    """`Pipeline.separate` (see there); returns a GenerationResult."""
    from .pipeline import GenerationResult, _timed

    variant = pipe.variant
    if not variant.separation:
        separating = [n for n, v in VARIANTS.items() if v.separation]
        raise UsageError(
            f"{variant.name} generates; separation needs one of: {', '.join(separating)}"
        )
    rate = variant.audio.sample_rate
    timings: dict[str, float] = {}
    use_video = video and has_video(source)
    sync = clip = None
    window = duration
    with _timed(timings, "decode", pipe.device):
        if use_video:
            v = media.decode_video(
                source,
                duration=duration,
                start=start,
                need_clip=variant.uses_clip_video,
                progress=progress,
                sync_center_crop=variant.sync_center_crop,
            )
            window, start = v.duration, v.start
            sync = media.to_model_input(v.sync_frames)[None]
            clip = None if v.clip_frames is None else v.clip_frames.float() / 255
        wav = read_mixture(mixture or source, rate, start, window)
    seq = variant.sequence_lengths(window)
    with _timed(timings, "text", pipe.device):
        text = pipe.encode_text(prompts, negative_prompt)
    out = pipe.synthesize(
        sync,
        text,
        duration=window,
        clip_frames=clip,
        seed=seed,
        steps=steps,
        cfg=cfg,
        progress=progress,
        timings=timings,
        mixture=fit_to_window(wav, seq.audio_samples),
        normalize_mixture_latent=normalize_mixture_latent,
    )
    # The stem ends with the picture, or earlier with the mixture.
    samples = min(round(window * rate), wav.shape[0])
    return GenerationResult(
        audio=out.audio[:, :samples].float().cpu().numpy(),
        sample_rate=rate,
        prompts=prompts,
        duration=samples / rate,
        start=start,
        seed=seed,
        steps=steps,
        cfg=cfg,
        timings=timings,
    )
