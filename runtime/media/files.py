"""Opening media files: the one place PyAV and soundfile are reached, and the checks and
messages every reader shares (missing, empty, unreadable, not a video)."""

from __future__ import annotations  # PyAV types in signatures stay unevaluated (OnFirstUse)

import importlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import MediaError


class OnFirstUse:
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


av = OnFirstUse("av", "reading or writing video")
soundfile = OnFirstUse("soundfile", "writing audio stems")


def decoder_version() -> str:
    """PyAV's version, which fixes the FFmpeg its wheels bundle: what decodes the frames."""
    return av.__version__


def existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path} does not exist; check the path")
    if path.is_dir():
        raise MediaError(f"{path} is a directory; pass a video file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path} is empty (0 bytes)")
    return path


def why(err: Exception) -> str:
    """ffmpeg's reason, without the errno and file name PyAV adds."""
    reason = getattr(err, "strerror", None) or str(err)
    return " ".join(str(reason).split())


def open_media(path: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(path))
    except PermissionError:
        raise MediaError(f"{path} is not readable (permission denied)") from None
    except (av.error.FFmpegError, OSError) as err:
        raise MediaError(
            f"{path.name} is not a media file ffmpeg can read, or is truncated ({why(err)})"
        ) from None
    # ffmpeg also "plays" text files (the tty demuxer renders .txt as ANSI art) and still images.
    kind = container.format.name
    if kind == "tty" or kind == "image2" or kind.endswith("_pipe"):
        container.close()
        what = "text" if kind == "tty" else "a still image"
        raise MediaError(f"{path.name} is {what}, not a media file with video; pass a video file")
    return container


def video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    """The first real video stream (cover art in audio files is a one-picture 'video' stream)."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise MediaError(f"{path.name} has no video stream; pass a video file")


def packets_from(
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
