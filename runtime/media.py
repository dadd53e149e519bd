"""Media I/O: decode the frames the model needs, write audio stems, mux audio into the clip.

Decoding reproduces the official demo's `load_video` (spec §1.2-1.3) bit-exactly with PyAV and
torch: the same frames are picked by the same float timing rule and resized by the same uint8
bicubic kernel torchvision uses. Everything else here is selva-rt's own, and where it departs
from what the official code would do with the same file, it says so:
  * `start` (the official demo always starts at 0) seeks to the keyframe before it;
  * a display matrix (phone clips) is honoured: frames are turned upright before resizing;
  * clips under 0.64 s and damaged files are refused with a one-line MediaError instead of
    failing deep inside the model. Variable-frame-rate clips (phone footage) are taken as shot:
    the timing rule picks frames by presentation time, as the official code would;
  * clips longer than the trained 8 s are decoded window by window in one pass
    (`decode_windows`), each window timed from its own start.
"""

from __future__ import annotations  # PyAV types in signatures stay unevaluated (_OnFirstUse)

import heapq
import importlib
import io
import math
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .errors import MediaError, OutputError, UsageError
from .outputs import FALLBACK_CONTAINER, MUX_FORMATS
from .variants import CLIP_FPS, CLIP_SIZE, DEFAULT_DURATION, SYNC_FPS, SYNC_SEGMENT, SYNC_SIZE


class _OnFirstUse:
    """A module imported when first used. PyAV and soundfile are needed only to read or write
    media files, so everything else (the pipeline on tensors, the backends, bench without
    --file-to-file, benchmarks/gpu_check.py) runs where they are not installed; there, reading or
    writing media is a one-line MediaError."""

    def __init__(self, name: str, what: str):
        self._name, self._what = name, what

    def __getattr__(self, attr: str):
        try:
            module = importlib.import_module(self._name)
        except ImportError as err:
            raise MediaError(
                f"{self._what} needs the Python package {self._name!r}, which cannot be imported "
                f"here ({err}); install it with pip install {self._name}"
            ) from None
        return getattr(module, attr)


av = _OnFirstUse("av", "reading or writing video")
soundfile = _OnFirstUse("soundfile", "writing audio stems")

_BAR = "{desc}: {n:.2f}/{total:.2f} s |{bar}|"

MIN_SIDE = 16
MAX_SIDE = 8192
# A window of a long clip may end up to this many frames short where frame-timing ties fall
# differently at the clip's very end; its last frame is held (see decode_windows).
MAX_END_REPEATS = 2
# Decoding that ends this much before the stream's stated duration means a truncated file.
TRUNCATION_SLACK = 0.5

STEM_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
AUDIO_LAYOUTS = {1: "mono", 2: "stereo"}

# Polyphase windowed-sinc resampler: resampy's `kaiser_best` design (64 zero crossings each
# side, pass band up to 94.76% of the lower Nyquist, Kaiser beta 14.77: about -100 dB stop band).
RESAMPLE_ZEROS = 64
RESAMPLE_ROLLOFF = 0.9475937167399596
RESAMPLE_BETA = 14.769656459379492


@dataclass
class Video:
    """The model's view of a clip's window [start, start + duration].

    sync_frames: [T_sync, 3, 224, 224] uint8 RGB (25 fps), T_sync = int(25 * duration)
    clip_frames: [T_clip, 3, S, S] uint8 RGB (8 fps), T_clip = int(8 * duration), S =
        clip_size (384; Flowley's CLIP 224); None unless decoded with need_clip=True
    sync_index / clip_index: [T] int64, decode-order number of the source frame behind each
        output frame (counted from the stream's first frame; from `start` > 0 on a variable
        frame rate, the first one is estimated from the stream's average rate)
    """

    sync_frames: torch.Tensor
    clip_frames: torch.Tensor | None
    duration: float  # effective: min(requested, what the clip holds)
    start: float
    fps: Fraction  # the stream's guessed rate, as the official VideoInfo.fps
    size: tuple[int, int]  # (width, height) of the decoded source frames, before rotation
    rotation: int  # degrees counter-clockwise applied to show the frames upright
    sync_index: torch.Tensor
    clip_index: torch.Tensor
    decoded_frames: int  # frames the decoder produced (a measure of work done)


def to_model_input(sync_u8: torch.Tensor) -> torch.Tensor:
    """sync_u8: [T, 3, 224, 224] uint8 -> [T, 3, 224, 224] float32 in [-1, 1].

    Bit-exact with the official ToDtype(float32, scale=True) + Normalize(0.5, 0.5).
    """
    return (sync_u8.float() * (1 / 255) - 0.5) / 0.5


def resize(image: torch.Tensor, size: int, center_crop: bool = False) -> torch.Tensor:
    """image: [3, H, W] uint8 -> [3, size, size] uint8, squashed (no crop); with `center_crop`
    the short side is scaled to `size` and the middle cut out (MMAudioSep's sync frames:
    v2.Resize(size) then v2.CenterCrop(size), with torchvision's size and offset rounding).

    torch's native uint8 antialiased bicubic kernel on CPU: what torchvision's v2.Resize runs on
    uint8 tensors, so bit-exact with the official transforms (spec §1.3).
    """
    h, w = image.shape[-2:]
    out = (size, size)
    if center_crop:
        long = int(size * max(h, w) / min(h, w))
        out = (size, long) if h <= w else (long, size)
    image = F.interpolate(
        image[None], size=out, mode="bicubic", antialias=True, align_corners=False
    )[0]
    if center_crop:
        top, left = (int(round((n - size) / 2.0)) for n in out)
        image = image[:, top : top + size, left : left + size]
    return image


class _Track:
    """Sample-and-hold selection at one target rate (spec §1.2).

    Output frame k is the first frame whose time is >= next_t, where next_t is the float sum of
    k steps of 1/fps, accumulated exactly as the official code does (not k/fps). Frames are
    kept only up to `keep`; later ones are just counted, since the count sets the duration.
    """

    def __init__(self, fps: int, size: int, keep: int, center_crop: bool = False):
        self.fps, self.size, self.keep, self.center_crop = fps, size, keep, center_crop
        self.step = 1 / fps
        self.next_t = 0.0
        self.count = 0
        self.frames: list[torch.Tensor] = []
        self.index: list[int] = []

    def seconds(self) -> float:
        return self.count / self.fps


def decode_video(
    path: str | os.PathLike,
    duration: float = DEFAULT_DURATION,
    start: float = 0.0,
    need_clip: bool = False,
    progress: bool = False,
    clip_size: int = CLIP_SIZE,
    sync_center_crop: bool = False,
) -> Video:
    """Decode the window [start, start + duration] of a clip's first video stream.

    With start == 0 this is the official `load_video(path, duration)`; `sync_center_crop` gives
    MMAudioSep's version of it (see `resize`). `start` is our
    extension (the official demo has none): times are measured from `start`, so the timing rule
    begins at 0 there, and the decoder seeks to the keyframe before `start`. Decoding stops as
    soon as later frames cannot change the result.
    """
    path = _existing_file(path)
    _check_window(duration, start)
    window = _Window(start, duration, need_clip, clip_size, sync_center_crop)
    decoded = next(_decode(path, [window], progress))
    duration = min(duration, window.clip.seconds(), window.sync.seconds())
    n_sync = int(SYNC_FPS * duration)
    if n_sync < SYNC_SEGMENT:
        raise MediaError(
            f"{path.name} gives only {duration:.2f} s of video from {start:.2f} s; at least "
            f"{SYNC_SEGMENT / SYNC_FPS:.2f} s ({SYNC_SEGMENT} frames at {SYNC_FPS} fps) is needed"
        )
    return window.video(decoded, duration)


def decode_windows(
    path: str | os.PathLike,
    starts: Sequence[float],
    duration: float,
    need_clip: bool = False,
    progress: bool = False,
    clip_size: int = CLIP_SIZE,
    sync_center_crop: bool = False,
) -> Iterator[Video]:
    """The windows [s, s + duration] of a clip for increasing starts s, each decoded as
    `decode_video(path, duration, s)` would, in one pass over the stream; yielded as each
    completes, so only the frames of windows that overlap the decoder's position are held.

    Every window gets int(25 * duration) sync frames (and int(8 * duration) CLIP frames): the
    window plan (runtime/windows.py) is made from `clip_duration`, so the picture holds them.
    Where a frame-timing tie at the clip's very end leaves a window up to MAX_END_REPEATS frames
    short, its last frame is held, as the official batch path pads a short clip; more is a
    damaged clip.
    """
    path = _existing_file(path)
    for s in starts:
        _check_window(duration, s)
    windows = [_Window(s, duration, need_clip, clip_size, sync_center_crop) for s in starts]
    n_sync, n_clip = int(SYNC_FPS * duration), int(CLIP_FPS * duration) if need_clip else 0
    for decoded, window in zip(_decode(path, windows, progress), windows, strict=True):
        for track, n in ((window.sync, n_sync), (window.clip, n_clip)):
            if not 0 < n - len(track.frames) <= MAX_END_REPEATS:
                continue
            track.frames += track.frames[-1:] * (n - len(track.frames))
            track.index += track.index[-1:] * (n - len(track.index))
        if len(window.sync.frames) < n_sync or len(window.clip.frames) < n_clip:
            raise MediaError(
                f"{path.name} ends at {window.start + window.sync.seconds():.2f} s, before "
                f"{window.start + duration:.2f} s: its frames stop short of its timestamps "
                "(damaged or truncated)"
            )
        yield window.video(decoded, duration)


def clip_duration(path: str | os.PathLike, start: float = 0.0) -> float:
    """Seconds of picture from `start` by the official duration rule (`decode_video` with no
    limit on the duration), from the packets' timestamps: no frame is decoded (when every packet
    has one; else the frames are decoded for their times). 0 when nothing is at or after start.
    """
    path = _existing_file(path)
    with _open_media(path) as container:
        stream = _video_stream(container, path)
        pts = [p.pts for p in _packets_from(container, stream, start) if p.size]
        if None in pts:
            stream.thread_type = "AUTO"
            times = [f.time for f in _decoded_frames(container, stream, start, path)]
        else:
            times = [float(t * stream.time_base) for t in pts]
    times = [t for t in times if t is not None and t >= start]
    if not times:
        return 0.0
    last = max(times) - start
    slots = {}
    for fps in (SYNC_FPS, CLIP_FPS):  # output frames whose accumulated time the last one reaches
        track = _Track(fps, 0, 0)
        while last >= track.next_t:
            track.count += 1
            track.next_t += track.step
        slots[fps] = track.seconds()
    return min(slots.values())


def _check_window(duration: float, start: float) -> None:
    if not (math.isfinite(duration) and duration > 0):
        raise UsageError(f"duration must be a positive number of seconds, not {duration!r}")
    if not (math.isfinite(start) and start >= 0):
        raise UsageError(f"start must be a non-negative number of seconds, not {start!r}")


class _Window:
    """One window's tracks: sync frames at 25 fps and CLIP frames at 8 fps (kept only when
    needed, but always counted: the count sets the duration), timed from `start`."""

    def __init__(
        self,
        start: float,
        duration: float,
        need_clip: bool,
        clip_size: int = CLIP_SIZE,
        sync_center_crop: bool = False,
    ):
        self.start, self.duration = start, duration
        self.sync = _Track(SYNC_FPS, SYNC_SIZE, int(SYNC_FPS * duration), sync_center_crop)
        self.clip = _Track(CLIP_FPS, clip_size, int(CLIP_FPS * duration) if need_clip else 0)
        self.tracks = [self.sync, self.clip]
        self.need_clip = need_clip
        self.done = False

    def full(self) -> bool:
        """Later frames cannot change the result."""
        return all(track.seconds() >= self.duration for track in self.tracks)

    def video(self, decoded: _Decoded, duration: float) -> Video:
        """The window's Video, `duration` seconds of it (its frames move into the Video)."""
        n_sync, n_clip = int(SYNC_FPS * duration), int(CLIP_FPS * duration)
        video = Video(
            sync_frames=torch.stack(self.sync.frames[:n_sync]),
            clip_frames=torch.stack(self.clip.frames[:n_clip]) if self.need_clip else None,
            duration=duration,
            start=self.start,
            fps=decoded.fps,
            size=decoded.size,
            rotation=decoded.rotation,
            sync_index=torch.tensor(self.sync.index[:n_sync], dtype=torch.int64),
            clip_index=torch.tensor(self.clip.index[:n_clip], dtype=torch.int64),
            decoded_frames=decoded.frames,
        )
        self.sync.frames, self.clip.frames = [], []
        return video


@dataclass
class _Decoded:
    """What the decoder learned of the stream by the time a window completed."""

    fps: Fraction
    size: tuple[int, int]
    rotation: int = 0
    frames: int = 0  # decoded so far


def _decode(path: Path, windows: list[_Window], progress: bool) -> Iterator[_Decoded]:
    """One pass over the stream from the keyframe before the first window; yields once per
    window (in order) when it is complete: full, passed, or the stream ended."""
    first, end = windows[0].start, windows[-1].start + windows[-1].duration
    with _open_media(path) as container:
        stream = _video_stream(container, path)
        info = _Decoded(_fps(stream), _check_size(stream, path))
        stream.thread_type = "AUTO"
        bar = tqdm(
            total=round(end - first, 2),
            unit="s",
            desc="decoding",
            leave=False,
            disable=not (progress and sys.stderr.isatty()),
            bar_format=_BAR,
        )
        pending = 0  # the first window not yet yielded
        for frame in _decoded_frames(container, stream, first, path):
            t = frame.time
            if t is None:
                raise MediaError(
                    f"{path.name} has video frames without timestamps; remux it into MP4 first"
                )
            if info.frames == 0:
                info.rotation = _rotation(frame, path)
                first_index = _frame_number(stream, t, info.fps) if first > 0 else 0
            index = first_index + info.frames  # decode-order number of this frame
            info.frames += 1
            pictures: dict[int, torch.Tensor] = {}
            for window in windows[pending:]:
                if t < window.start:
                    break  # later windows start later still
                # t - start == t when start == 0, as in the official code
                if window.done or t - window.start > window.duration:
                    window.done = True
                    continue
                _take(frame, t - window.start, index, info.rotation, window.tracks, pictures)
                window.done = window.full()
            bar.update(round(min(t - first, end - first), 2) - bar.n)
            while pending < len(windows) and windows[pending].done:
                pending += 1
                yield info
            if pending == len(windows):
                break
        else:  # the stream ended inside a window
            if info.frames == 0:
                raise MediaError(f"{path.name} has a video stream but no decodable frames")
            if t < first:
                raise MediaError(f"{path.name} ends at {t:.2f} s, before the start {first:.2f} s")
            _check_not_truncated(stream, t, info.fps, path)
            for _ in windows[pending:]:
                yield info
        bar.close()


@dataclass(frozen=True)
class ClipInfo:
    """What `probe` learns from a clip's header and first frame."""

    size: tuple[int, int]  # (width, height) as stored
    rotation: int  # counter-clockwise degrees decode_video turns the frames by
    fps: Fraction
    seconds: float | None  # the video stream's stated length, when the container gives one
    codec: str


def probe(path: str | os.PathLike) -> ClipInfo:
    """Check a clip cheaply, before any weights load: header and first frame only.

    Raises the MediaError decode_video would for a missing, unreadable, video-less, wrongly
    sized, undecodable or mirrored clip. What needs the whole window (too short, truncated
    later on) is left to decode_video.
    """
    path = _existing_file(path)
    with _open_media(path) as container:
        stream = _video_stream(container, path)
        size = _check_size(stream, path)
        frame = next(_decoded_frames(container, stream, 0.0, path), None)
        if frame is None:
            raise MediaError(f"{path.name} has a video stream but no decodable frames")
        seconds = float(stream.duration * stream.time_base) if stream.duration else None
        return ClipInfo(
            size=size,
            rotation=_rotation(frame, path),
            fps=_fps(stream),
            seconds=seconds,
            codec=stream.codec_context.name,
        )


def _take(
    frame: av.VideoFrame,
    t: float,
    index: int,
    rotation: int,
    tracks: list[_Track],
    pictures: dict[int, torch.Tensor],
):
    """Append `frame` (at window time t) to every track whose next_t it has reached. `pictures`
    holds this frame's pictures by (size, centre crop), 0 for the upright source (shared by
    repeats and by windows)."""
    for track in tracks:
        key = (track.size, track.center_crop)
        while t >= track.next_t:
            if len(track.frames) < track.keep:
                if key not in pictures:
                    if 0 not in pictures:
                        rgb = frame.to_ndarray(format="rgb24")  # [H, W, 3], as official
                        if rotation:
                            rgb = np.ascontiguousarray(np.rot90(rgb, rotation // 90))
                        pictures[0] = torch.from_numpy(rgb).permute(2, 0, 1)
                    pictures[key] = resize(pictures[0], track.size, track.center_crop)
                track.frames.append(pictures[key])
            track.index.append(index)
            track.count += 1
            track.next_t += track.step


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path} does not exist; check the path")
    if path.is_dir():
        raise MediaError(f"{path} is a directory; pass a video file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path} is empty (0 bytes)")
    return path


def _why(err: Exception) -> str:
    """ffmpeg's reason, without the errno and file name PyAV adds."""
    reason = getattr(err, "strerror", None) or str(err)
    return " ".join(str(reason).split())


def _open_media(path: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(path))
    except PermissionError:
        raise MediaError(f"{path} is not readable (permission denied)") from None
    except (av.error.FFmpegError, OSError) as err:
        raise MediaError(
            f"{path.name} is not a media file ffmpeg can read, or is truncated ({_why(err)})"
        ) from None
    # ffmpeg also "plays" text files (the tty demuxer renders .txt as ANSI art) and still images.
    kind = container.format.name
    if kind == "tty" or kind == "image2" or kind.endswith("_pipe"):
        container.close()
        what = "text" if kind == "tty" else "a still image"
        raise MediaError(f"{path.name} is {what}, not a media file with video; pass a video file")
    return container


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    """The first real video stream (cover art in audio files is a one-picture 'video' stream)."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise MediaError(f"{path.name} has no video stream; pass a video file")


def _check_size(stream: av.VideoStream, path: Path) -> tuple[int, int]:
    width, height = stream.codec_context.width, stream.codec_context.height
    if not width or not height:
        raise MediaError(f"{path.name} has a video stream but no decodable frames")
    if min(width, height) < MIN_SIDE or max(width, height) > MAX_SIDE:
        raise MediaError(
            f"{path.name} is {width}x{height}; sides of {MIN_SIDE} to {MAX_SIDE} pixels "
            "are supported"
        )
    return width, height


def _fps(stream: av.VideoStream) -> Fraction:
    return stream.guessed_rate or stream.average_rate or Fraction(0)


def _decoded_frames(
    container: av.container.InputContainer, stream: av.VideoStream, start: float, path: Path
) -> Iterator[av.VideoFrame]:
    """Frames in presentation order from the keyframe before `start`; decoder errors become
    MediaErrors."""
    at = "the start"
    try:
        for packet in _packets_from(container, stream, start):
            for frame in stream.decode(packet):
                at = f"{frame.time:.2f} s" if frame.time is not None else at
                yield frame
    except av.error.FFmpegError as err:
        raise MediaError(
            f"{path.name} is damaged or truncated: decoding failed after {at} ({_why(err)})"
        ) from None


def _packets_from(
    container: av.container.InputContainer, stream: av.VideoStream, start: float
) -> Iterator[av.Packet]:
    """The stream's packets in decode order, from the last keyframe at or before `start`."""
    packets = container.demux(stream)
    if start <= 0:
        yield from packets
        return
    container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
    packets = container.demux(stream)
    first = next(packets, None)
    # A seek that lands after `start` (poor or missing index) would lose frames: start over.
    if first is not None and first.pts is not None and first.pts * stream.time_base > start:
        container.seek(0, backward=True, any_frame=False)
        packets = container.demux(stream)
        first = next(packets, None)
    if first is not None:
        yield first
    yield from packets


def _frame_number(stream: av.VideoStream, t: float, fps: Fraction) -> int:
    """Decode-order number of the frame at time t, for a constant-rate stream."""
    t0 = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    return round((t - t0) * fps)


def _rotation(frame: av.VideoFrame, path: Path) -> int:
    """Counter-clockwise degrees that show the frame upright, from its display matrix.

    Players honour the matrix, so we do too: a phone clip shot upright is seen upright. (The
    official demo ignores it and would give the model a sideways picture.) Mirrored or
    non-right-angle matrices are refused.
    """
    matrix = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
    if matrix is None:
        return 0
    a, b, _, c, d, *_ = np.frombuffer(bytes(matrix), dtype="<i4").astype(np.int64)
    degrees = frame.rotation
    if a * d - b * c < 0 or degrees % 90:
        raise MediaError(
            f"{path.name} has a mirrored or {degrees}-degree display matrix; re-encode it "
            "upright first"
        )
    return degrees % 360


def _check_not_truncated(stream: av.VideoStream, last: float, fps: Fraction, path: Path):
    """The decoder ran out of frames: fine at the stream's end, not well before it."""
    if stream.duration is None:
        return
    t0 = stream.start_time or 0
    stated_end = float((t0 + stream.duration) * stream.time_base)
    frame_time = 1 / float(fps) if fps else 0.0
    if stated_end - (last + frame_time) > TRUNCATION_SLACK:
        raise MediaError(
            f"{path.name} is truncated: its header says {stated_end:.2f} s but frames end at "
            f"{last:.2f} s"
        )


# ----------------------------------------------------------------------------------------------
# Audio out


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


def _pcm24(wav: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int32 holding 24-bit PCM in its top 24 bits (what PCM_24 writers take)."""
    q = np.clip(np.round(wav.astype(np.float64) * 2**23), -(2**23), 2**23 - 1)
    return q.astype(np.int32) << 8


def _as_channels(wav, what: str) -> np.ndarray:
    """[T] or [C, T] tensor/array -> [C, T] float32 numpy, finite."""
    x = wav.detach().cpu().float().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav)
    x = np.atleast_2d(x.astype(np.float32, copy=False))
    if x.ndim != 2 or x.shape[0] > 8 or x.shape[1] == 0:
        raise UsageError(f"{what}: audio must be [channels, samples], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise OutputError(f"{what}: the audio has NaN or infinite samples; nothing written")
    return x


def write_audio(
    path: str | os.PathLike,
    wav: torch.Tensor | np.ndarray,
    sample_rate: int,
    fmt: str | None = None,
    out_rate: int | None = None,
    force: bool = False,
) -> Path:
    """Write a stem. wav: [C, T] (or [T]) float in [-1, 1] at sample_rate.

    fmt: "wav" or "flac" (default: from the suffix). out_rate: resample first (e.g. 48000
    for video work). Always 24-bit PCM: it keeps the model's output far below audibility
    (-144 dB quantisation, no dither needed), leaves headroom for mixing, and every DAW/NLE
    reads it, unlike 32-bit float WAV. Written atomically; an existing file is kept unless
    force=True.
    """
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if f".{fmt}" not in STEM_FORMATS:
        raise OutputError(f"{path.name}: stems are written as .wav or .flac, not {fmt!r}")
    x = _as_channels(wav, path.name)
    if out_rate and out_rate != sample_rate:
        x = resample(torch.from_numpy(x), sample_rate, out_rate).numpy()
        sample_rate = out_rate
    with _AtomicWrite(path, force) as tmp:
        soundfile.write(
            tmp, _pcm24(x).T, sample_rate, subtype="PCM_24", format=STEM_FORMATS[f".{fmt}"]
        )
    return path


class _AtomicWrite:
    """Write to a temporary file beside `path`, then os.replace it into place (or delete it).

    Checks up front, so a refused output costs no work: `with _AtomicWrite(p, force) as tmp:`.
    """

    def __init__(self, path: Path, force: bool):
        if path.exists() and not force:
            raise OutputError(f"{path} exists; pass --force to overwrite it")
        if not path.parent.is_dir():
            raise OutputError(f"cannot write {path}: {path.parent} is not a directory")
        self.path = path

    def __enter__(self) -> str:
        try:
            fd, self.tmp = tempfile.mkstemp(
                prefix=f".{self.path.name}.", suffix=".part", dir=self.path.parent
            )
        except OSError as err:
            raise OutputError(f"cannot write {self.path}: {_why(err)}") from None
        os.close(fd)
        # mkstemp makes the file 0600; a written file gets what the user's umask gives.
        os.chmod(self.tmp, 0o666 & ~_umask())
        return self.tmp

    def __exit__(self, kind, err, tb):
        if kind is None:
            try:
                os.replace(self.tmp, self.path)
                return False
            except OSError as err:
                os.unlink(self.tmp)
                raise OutputError(f"cannot write {self.path}: {_why(err)}") from None
        os.unlink(self.tmp)
        return False


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------------------------
# Mux


def mux(
    video_path: str | os.PathLike,
    audio: torch.Tensor | np.ndarray,
    sample_rate: int,
    out_path: str | os.PathLike,
    start: float = 0.0,
    duration: float | None = None,
    force: bool = False,
) -> Path:
    """Put `audio` ([C, T] or [T] float in [-1, 1], generated for the clip's window from
    `start`) beside the clip's video stream, copied without re-encoding.

    The container follows out_path's suffix: .mp4/.m4v get AAC, .mov/.mkv 24-bit PCM. Other
    streams of the clip (its own audio, subtitles) are left out.

    Stream copy can only cut at keyframes. The rule: video packets run, in decode order, from
    the last keyframe at or before `start` up to (not including) the first packet whose decode
    time is at or past start + duration (default: the audio's length), so every kept frame
    stays decodable. The output timeline starts at that keyframe, and the audio keeps its true
    place in it: when `start` is not on a keyframe it begins after (start - keyframe) seconds of
    silence. The audio is cut where the last picture ends. With start == 0 and a clip no longer
    than the window, every video packet is copied: the video stream is bit-identical.
    """
    video_path, out_path = _existing_file(video_path), Path(out_path)
    suffix = out_path.suffix.lower()
    if suffix not in MUX_FORMATS:
        raise OutputError(f"{out_path.name}: mux into .mp4, .m4v, .mov or .mkv, not {suffix!r}")
    muxer, codec, sample_format = MUX_FORMATS[suffix]
    x = _as_channels(audio, out_path.name)
    if x.shape[0] not in AUDIO_LAYOUTS:
        raise UsageError(f"mux takes mono or stereo audio, not {x.shape[0]} channels")
    if not (math.isfinite(start) and start >= 0):
        raise UsageError(f"start must be a non-negative number of seconds, not {start!r}")
    end = start + (x.shape[1] / sample_rate if duration is None else duration)
    target = _AtomicWrite(out_path, force)

    with _open_media(video_path) as source:
        stream = _video_stream(source, video_path)
        video = _video_window(source, stream, start, end)
        if not video:
            raise MediaError(f"{video_path.name} has no video packets from {start:.2f} s")
        tb = stream.time_base
        origin = _pts(video[0])
        frame_ticks = round(1 / (stream.guessed_rate * tb)) if stream.guessed_rate else 0
        picture_end = max(_pts(p) + (p.duration or frame_ticks) for p in video)
        if start >= picture_end * tb:
            raise MediaError(
                f"{video_path.name} ends at {float(picture_end * tb):.2f} s, before the start "
                f"{start:.2f} s"
            )
        lead, picture = start - float(origin * tb), float((picture_end - origin) * tb)
        x = _place_audio(x, sample_rate, lead=lead, length=picture)

        with target as tmp:
            options = {"movflags": "+faststart"} if muxer in ("mp4", "mov") else {}
            with av.open(tmp, "w", format=muxer, container_options=options) as out:
                try:  # opaque: the decoder's codec, so a stream copy needs no encoder
                    out_video = out.add_stream_from_template(stream, opaque=True)
                except ValueError:
                    raise OutputError(
                        f"the {stream.codec_context.name} video of {video_path.name} cannot go "
                        f"into {suffix} without re-encoding; use .mkv"
                    ) from None
                if muxer in ("mp4", "mov") and source.format.name.startswith("mov,mp4"):
                    # Keep e.g. HEVC's 'hvc1' (Apple players refuse ffmpeg's default 'hev1').
                    out_video.codec_context.codec_tag = stream.codec_context.codec_tag
                out_audio = _audio_stream(out, codec, sample_rate, x.shape[0])
                for packet in video:
                    packet.stream = out_video
                    packet.pts = None if packet.pts is None else packet.pts - origin
                    packet.dts = None if packet.dts is None else packet.dts - origin
                audio = _encode_audio(out_audio, x, sample_rate, sample_format)
                try:
                    for packet in _interleave(video, audio):
                        out.mux(packet)
                except av.error.FFmpegError as err:
                    raise OutputError(
                        f"cannot mux the {stream.codec_context.name} video of {video_path.name} "
                        f"into {suffix} ({_why(err)}); pass --no-video for the stems alone"
                    ) from None
    return out_path


def mux_suffix(video_path: str | os.PathLike, preferred: str) -> str:
    """`preferred` (a key of MUX_FORMATS) when its container takes the clip's video codec as
    it is, else ".mkv" (Matroska takes nearly every codec)."""
    video_path = _existing_file(video_path)
    with _open_media(video_path) as source:
        codec = _video_stream(source, video_path).codec_context.name
    with av.open(io.BytesIO(), "w", format=MUX_FORMATS[preferred][0]) as probe_out:
        return preferred if codec in probe_out.supported_codecs else FALLBACK_CONTAINER


def _interleave(video: list[av.Packet], audio: list[av.Packet]) -> Iterator[av.Packet]:
    """Both streams' packets by decode time, each stream's in its own order. (A plain sort by
    timestamp would move video packets whose decode time the demuxer left unset, e.g. Matroska's
    B-frames, and the muxer refuses the result.)"""
    keyed, last = [], -math.inf
    for packet in video:
        if packet.dts is not None:
            last = max(last, packet.dts * packet.time_base)
        keyed.append((last, packet))
    timed = ((_dts(p) * p.time_base, p) for p in audio)
    for _, packet in heapq.merge(keyed, timed, key=lambda item: item[0]):
        yield packet


def _pts(packet: av.Packet) -> int:
    return packet.pts if packet.pts is not None else packet.dts


def _dts(packet: av.Packet) -> int:
    return packet.dts if packet.dts is not None else packet.pts


def _video_window(
    source: av.container.InputContainer, stream: av.VideoStream, start: float, end: float
) -> list[av.Packet]:
    """Packets in decode order from the last keyframe at or before `start` up to the first one
    decoded at or after `end` (see `mux`)."""
    packets = []
    for packet in _packets_from(source, stream, start):
        if packet.dts is None and packet.pts is None:  # demux's flush packet
            continue
        if not packets and not packet.is_keyframe:
            continue
        if _dts(packet) * stream.time_base >= end:
            break
        packets.append(packet)
    return packets


def _place_audio(x: np.ndarray, rate: int, lead: float, length: float) -> np.ndarray:
    """x: [C, T] -> [C, T'] on the output timeline: starting `lead` seconds in (silence before,
    or cut if negative), ending by `length` seconds."""
    offset = round(lead * rate)
    if offset > 0:
        x = np.concatenate([np.zeros((x.shape[0], offset), np.float32), x], axis=1)
    else:
        x = x[:, -offset:]
    return x[:, : max(0, math.floor(length * rate))]


def _audio_stream(out: av.container.OutputContainer, codec: str, rate: int, channels: int):
    stream = out.add_stream(codec, rate=rate, layout=AUDIO_LAYOUTS[channels])
    if codec == "aac":
        # 128 kb/s per channel, within AAC-LC's limit of 6 bits per sample per channel.
        stream.bit_rate = channels * min(128_000, 6 * rate)
    return stream


def _encode_audio(stream, x: np.ndarray, rate: int, sample_format: str) -> list[av.Packet]:
    """x: [C, T] float32 -> the stream's packets (the encoder chunks the frame itself)."""
    if sample_format == "fltp":
        data = np.ascontiguousarray(x)
    else:  # packed 32-bit ints carrying 24-bit PCM: [1, T * C], channels interleaved
        data = _pcm24(x).T.reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(data, format=sample_format, layout=stream.layout.name)
    frame.sample_rate = rate
    frame.pts = 0
    frame.time_base = Fraction(1, rate)
    return stream.encode(frame) + stream.encode(None)
