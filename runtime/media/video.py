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

from __future__ import annotations  # PyAV types in signatures stay unevaluated (OnFirstUse)

import dataclasses
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import MediaError, UsageError
from ..variants import CLIP_FPS, CLIP_SIZE, DEFAULT_DURATION, SYNC_FPS, SYNC_SEGMENT, SYNC_SIZE
from .edit import Edit
from .files import av, existing_file, open_media, packets_from, video_stream, why

_BAR = "{desc}: {n:.2f}/{total:.2f} s |{bar}|"

MIN_SIDE = 16
MAX_SIDE = 8192
# A window of a long clip may end up to this many frames short where frame-timing ties fall
# differently at the clip's very end; its last frame is held (see decode_windows).
MAX_END_REPEATS = 2
# Decoding that ends this much before the stream's stated duration means a truncated file.
TRUNCATION_SLACK = 0.5
# Seconds within which two times are the same (float windows against exact frame times).
EPSILON = 1e-6


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
    source: Path | Edit | None = None  # the clip (or edit) it was decoded from
    more: bool = False  # the clip has more picture after the window (`decode_video(peek=True)`)

    def head(self, duration: float) -> Video:
        """The window's first `duration` seconds: the frames a decode of that window picks
        (the timing rule counts from the same start, so they are a prefix of these)."""
        n_sync, n_clip = int(SYNC_FPS * duration), int(CLIP_FPS * duration)
        clip = None if self.clip_frames is None else self.clip_frames[:n_clip]
        return dataclasses.replace(
            self,
            sync_frames=self.sync_frames[:n_sync],
            clip_frames=clip,
            duration=duration,
            sync_index=self.sync_index[:n_sync],
            clip_index=self.clip_index[:n_clip],
            more=True,
        )

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The pictures as the networks take them: sync [1, T, 3, 224, 224] float32 in [-1, 1]
        and, when decoded, clip [T_clip, 3, S, S] float32 in [0, 1]."""
        inputs = {"sync": to_model_input(self.sync_frames)[None]}
        if self.clip_frames is not None:
            inputs["clip"] = self.clip_frames.float() / 255
        return inputs


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
    path: str | os.PathLike | Edit,
    duration: float = DEFAULT_DURATION,
    start: float = 0.0,
    need_clip: bool = False,
    progress: bool = False,
    clip_size: int = CLIP_SIZE,
    sync_center_crop: bool = False,
    peek: bool = False,
    to_end: bool = False,
) -> Video:
    """Decode the window [start, start + duration] of a clip's first video stream (or of an
    `Edit`'s picture).

    With start == 0 this is the official `load_video(path, duration)`; `sync_center_crop` gives
    MMAudioSep's version of it (see `resize`). `start` is our
    extension (the official demo has none): times are measured from `start`, so the timing rule
    begins at 0 there, and the decoder seeks to the keyframe before `start`. Decoding stops as
    soon as later frames cannot change the result; with `peek`, one frame on, which tells
    whether the clip has more picture after the window (`Video.more`: a longer clip is then
    generated in windows, without a pass to measure it first).

    `to_end` (selva-rt's, for stems that cover the picture to its last frame): where the
    picture ends inside the window, the window's duration is the exact time from `start` to the
    end of the last frame, not the official frame-count rule's (which can drop the last frames:
    2.96 s of a 3.00 s clip), and the last frame is held for the model's frames past it.
    """
    source = _source(path)
    _check_window(duration, start)
    window = _Window(start, duration, need_clip, clip_size, sync_center_crop, peek)
    decoded = next(_decode(source, [window], progress))
    left = None if decoded.end is None else decoded.end - Fraction(start)  # picture from start
    more, exact = window.more(), to_end or isinstance(source, Edit)
    if exact and left is not None and left <= duration + EPSILON:
        duration = min(duration, float(left))
        window.hold(duration)
    else:
        if exact and left is not None:
            more = more or left > duration + EPSILON
        duration = min(duration, window.clip.seconds(), window.sync.seconds())
    n_sync = int(SYNC_FPS * duration)
    if n_sync < SYNC_SEGMENT:
        raise MediaError(
            f"{_name(source)} gives only {duration:.2f} s of video from {start:.2f} s; at least "
            f"{SYNC_SEGMENT / SYNC_FPS:.2f} s ({SYNC_SEGMENT} frames at {SYNC_FPS} fps) is needed"
        )
    return window.video(decoded, duration, more)


def decode_windows(
    path: str | os.PathLike | Edit,
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
    source = _source(path)
    for s in starts:
        _check_window(duration, s)
    windows = [_Window(s, duration, need_clip, clip_size, sync_center_crop) for s in starts]
    n_sync, n_clip = int(SYNC_FPS * duration), int(CLIP_FPS * duration) if need_clip else 0
    for decoded, window in zip(_decode(source, windows, progress), windows, strict=True):
        window.hold(duration, MAX_END_REPEATS)
        if len(window.sync.frames) < n_sync or len(window.clip.frames) < n_clip:
            raise MediaError(
                f"{_name(source)} ends at {window.start + window.sync.seconds():.2f} s, before "
                f"{window.start + duration:.2f} s: its frames stop short of its timestamps "
                "(damaged or truncated)"
            )
        yield window.video(decoded, duration)


def clip_duration(
    path: str | os.PathLike | Edit, start: float = 0.0, to_end: bool = False
) -> float:
    """Seconds of picture from `start` by the official duration rule (`decode_video` with no
    limit on the duration), from the packets' timestamps: no frame is decoded (when every packet
    has one; else the frames are decoded for their times). 0 when nothing is at or after start.
    `to_end`: the exact time to the end of the last frame instead (`decode_video(to_end=True)`);
    an Edit's is always exact.
    """
    if isinstance(path, Edit):
        return max(0.0, float(path.duration - Fraction(start)))
    path = existing_file(path)
    with open_media(path) as container:
        stream = video_stream(container, path)
        step = 1 / Fraction(_fps(stream)) if _fps(stream) else Fraction(0)
        packets = [p for p in packets_from(container, stream, start) if p.size]
        if any(p.pts is None for p in packets):
            stream.thread_type = "AUTO"
            timed = [
                (Fraction(f.pts) * f.time_base, _frame_length(f, step))
                for f in _decoded_frames(container, stream, start, path)
                if f.pts is not None
            ]
        else:
            tb = stream.time_base
            timed = [(p.pts * tb, p.duration * tb if p.duration else step) for p in packets]
    timed = [(t, d) for t, d in timed if t >= Fraction(start)]
    if not timed:
        return 0.0
    if to_end:
        return float(max(t + d for t, d in timed) - Fraction(start))
    last = float(max(t for t, _ in timed)) - start
    slots = {}
    for fps in (SYNC_FPS, CLIP_FPS):  # output frames whose accumulated time the last one reaches
        track = _Track(fps, 0, 0)
        while last >= track.next_t:
            track.count += 1
            track.next_t += track.step
        slots[fps] = track.seconds()
    return min(slots.values())


def _source(path: str | os.PathLike | Edit) -> Path | Edit:
    return path if isinstance(path, Edit) else existing_file(path)


def _name(source: Path | Edit) -> str:
    return source.name


def _frame_length(frame: av.VideoFrame, step: Fraction) -> Fraction:
    """How long a frame shows: its own duration, else one frame at the stream's rate."""
    return Fraction(frame.duration) * frame.time_base if frame.duration else step


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
        peek: bool = False,
    ):
        self.start, self.duration, self.peek = start, duration, peek
        self.sync = _Track(SYNC_FPS, SYNC_SIZE, int(SYNC_FPS * duration), sync_center_crop)
        self.clip = _Track(CLIP_FPS, clip_size, int(CLIP_FPS * duration) if need_clip else 0)
        self.tracks = [self.sync, self.clip]
        self.need_clip = need_clip
        self.done = False

    def full(self) -> bool:
        """Later frames cannot change the result (peeking: a frame after the window counted)."""
        if self.peek:
            return self.more()
        return all(track.seconds() >= self.duration for track in self.tracks)

    def more(self) -> bool:
        """The tracks hold more than the window: the clip's duration (as `clip_duration` counts
        it) is longer than the window's."""
        return all(track.seconds() > self.duration for track in self.tracks)

    def hold(self, duration: float, most: int | None = None) -> None:
        """Hold each track's last frame for the frames `duration` needs that the picture did
        not fill (at most `most` per track; None: any number)."""
        for track, fps, keep in (
            (self.sync, SYNC_FPS, True),
            (self.clip, CLIP_FPS, self.need_clip),
        ):
            n = int(fps * duration)
            short = n - len(track.index)
            if short <= 0 or not track.index or (most is not None and short > most):
                continue
            if keep:
                track.frames += track.frames[-1:] * short
            track.index += track.index[-1:] * short
            track.count = max(track.count, n)

    def video(self, decoded: _Decoded, duration: float, more: bool | None = None) -> Video:
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
            source=decoded.source,
            more=self.more() if more is None else more,
        )
        self.sync.frames, self.clip.frames = [], []
        return video


@dataclass
class _Decoded:
    """What the decoder learned of the stream by the time a window completed."""

    fps: Fraction
    size: tuple[int, int]
    source: Path | Edit
    rotation: int = 0
    frames: int = 0  # decoded so far
    end: Fraction | None = None  # where the picture ends (the source was read to its end)


def _decode(source: Path | Edit, windows: list[_Window], progress: bool) -> Iterator[_Decoded]:
    """One pass over the picture from the keyframe before the first window; yields once per
    window (in order) when it is complete: full, passed, or the picture ended."""
    first, end = windows[0].start, windows[-1].start + windows[-1].duration
    info = _Decoded(Fraction(0), (0, 0), source if isinstance(source, Edit) else source.resolve())
    reader = _edit_frames if isinstance(source, Edit) else _file_frames
    frames = reader(source, first, info)
    bar = tqdm(
        total=round(end - first, 2),
        unit="s",
        desc="decoding",
        leave=False,
        disable=not (progress and sys.stderr.isatty()),
        bar_format=_BAR,
    )
    try:
        pending = 0  # the first window not yet yielded
        for frame, t, index, rotation in frames:
            info.frames += 1
            pictures: dict[int, torch.Tensor] = {}
            for window in windows[pending:]:
                if t < window.start:
                    break  # later windows start later still
                # t - start == t when start == 0, as in the official code
                if window.done or (t - window.start > window.duration and not window.peek):
                    window.done = True
                    continue
                _take(frame, t - window.start, index, rotation, window.tracks, pictures)
                window.done = window.full()
            bar.update(round(min(t - first, end - first), 2) - bar.n)
            while pending < len(windows) and windows[pending].done:
                pending += 1
                yield info
            if pending == len(windows):
                return
        for _ in windows[pending:]:  # the picture ended inside a window
            yield info
    finally:
        frames.close()
        bar.close()


def _file_frames(path: Path, first: float, info: _Decoded):
    """(frame, time, decode-order number, rotation) of a clip's frames from the keyframe before
    `first`; fills in `info` (rate and size on opening; `end` once the stream is exhausted)."""
    with open_media(path) as container:
        stream = video_stream(container, path)
        info.fps, info.size = _fps(stream), _check_size(stream, path)
        stream.thread_type = "AUTO"
        count, last = 0, None
        for frame in _decoded_frames(container, stream, first, path):
            t = frame.time
            if t is None:
                raise MediaError(
                    f"{path.name} has video frames without timestamps; remux it into MP4 first"
                )
            if last is None:
                info.rotation = _rotation(frame, path)
                first_index = _frame_number(stream, t, info.fps) if first > 0 else 0
            last = frame
            yield frame, t, first_index + count, info.rotation
            count += 1
        if last is None:
            raise MediaError(f"{path.name} has a video stream but no decodable frames")
        if last.time < first:
            raise MediaError(
                f"{path.name} ends at {last.time:.2f} s, before the start {first:.2f} s"
            )
        _check_not_truncated(stream, last.time, info.fps, path)
        step = 1 / Fraction(info.fps) if info.fps else Fraction(0)
        info.end = Fraction(last.pts) * last.time_base + _frame_length(last, step)


def _edit_frames(edit: Edit, first: float, info: _Decoded):
    """(frame, edit time, number, rotation) of an Edit's picture from `first`: each segment's
    frames from its in point to its out point, placed after the segments before it. A frame
    that shows at a segment's in point but starts before it (sources at another rate) plays
    from the in point. Fills in `info` as `_file_frames` does."""
    offset, count, begin = Fraction(0), 0, Fraction(first)
    for segment in edit.segments:
        if offset + segment.duration <= begin:
            offset += segment.duration
            continue
        path = existing_file(segment.path)
        out = segment.start + segment.duration
        with open_media(path) as container:
            stream = video_stream(container, path)
            size, fps = _check_size(stream, path), _fps(stream)
            if count == 0:
                info.fps, info.size = fps, size
            step = 1 / Fraction(fps) if fps else Fraction(0)
            stream.thread_type = "AUTO"
            seek = segment.start + max(Fraction(0), begin - offset)
            rotation, held, last, placed = None, None, None, 0
            for frame in _decoded_frames(container, stream, float(seek), path):
                if frame.pts is None:
                    raise MediaError(
                        f"{path.name} has video frames without timestamps; remux it into MP4 first"
                    )
                if rotation is None:
                    rotation = _rotation(frame, path)
                    info.rotation = info.rotation if count else rotation
                t = Fraction(frame.pts) * frame.time_base
                last = (t, frame)
                if t < segment.start:
                    held = frame
                    continue
                if held is not None and (t > segment.start):
                    yield held, float(offset), count, rotation
                    count, placed = count + 1, placed + 1
                held = None
                if t >= out:
                    break
                yield frame, float(offset + t - segment.start), count, rotation
                count, placed = count + 1, placed + 1
            else:
                if last is None:
                    raise MediaError(f"{path.name} has a video stream but no decodable frames")
                t, frame = last
                ends = t + _frame_length(frame, step)
                if ends < out - step / 2:
                    raise MediaError(
                        f"{path.name} ends at {float(ends):.2f} s, before the out point "
                        f"{float(out):.2f} s that {edit.name} uses"
                    )
                if held is not None:
                    yield held, float(offset), count, rotation
                    count, placed = count + 1, placed + 1
            if not placed:
                raise MediaError(f"{path.name} has no picture at {float(segment.start):.2f} s")
        offset += segment.duration
    if count == 0:
        raise MediaError(
            f"{edit.name} is {float(edit.duration):.2f} s long: no picture from {first:.2f} s"
        )
    info.end = offset


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
    path = existing_file(path)
    with open_media(path) as container:
        stream = video_stream(container, path)
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
        for packet in packets_from(container, stream, start):
            for frame in stream.decode(packet):
                at = f"{frame.time:.2f} s" if frame.time is not None else at
                yield frame
    except av.error.FFmpegError as err:
        raise MediaError(
            f"{path.name} is damaged or truncated: decoding failed after {at} ({why(err)})"
        ) from None


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


def has_video(path: str | os.PathLike) -> bool:
    """Whether the file has a real video stream (cover art does not count)."""
    path = existing_file(path)
    with open_media(path) as container:
        try:
            video_stream(container, path)
        except MediaError:
            return False
    return True
