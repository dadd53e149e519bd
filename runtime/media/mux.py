"""Muxing: the stem beside the clip's own video stream, copied without re-encoding."""

from __future__ import annotations  # PyAV types in signatures stay unevaluated (OnFirstUse)

import dataclasses
import heapq
import io
import math
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import MediaError, OutputError, UsageError
from .files import av, existing_file, open_media, packets_from, video_stream, why
from .write import AtomicWrite, as_channels, pcm24

if TYPE_CHECKING:
    from ..delivery.timecode import Timecode

# Muxed video: output suffix -> (muxer, audio codec, PyAV sample format of the frames fed to it).
# Stream copy keeps the clip's container where its audio codec choice is clear (AAC in MP4, PCM in
# MOV/MKV) and the container takes the clip's video codec; anything else is remuxed into
# Matroska, which takes nearly every video codec (`mux_suffix`).
MUX_FORMATS = {
    ".mp4": ("mp4", "aac", "fltp"),
    ".m4v": ("mp4", "aac", "fltp"),
    ".mov": ("mov", "pcm_s24le", "s32"),
    ".mkv": ("matroska", "pcm_s24le", "s32"),
}
FALLBACK_CONTAINER = ".mkv"
AUDIO_LAYOUTS = {1: "mono", 2: "stereo"}


def mux(
    video_path: str | os.PathLike,
    audio: torch.Tensor | np.ndarray,
    sample_rate: int,
    out_path: str | os.PathLike,
    start: float = 0.0,
    duration: float | None = None,
    force: bool = False,
    timecode: Timecode | None = None,
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

    `timecode` (the clip's first frame's) is written for the copy's first frame (a MOV/MP4
    `tmcd` track, a Matroska tag), so an editor finds the copy where the clip was.
    """
    video_path, out_path = existing_file(video_path), Path(out_path)
    suffix = out_path.suffix.lower()
    if suffix not in MUX_FORMATS:
        raise OutputError(f"{out_path.name}: mux into .mp4, .m4v, .mov or .mkv, not {suffix!r}")
    muxer, codec, sample_format = MUX_FORMATS[suffix]
    x = as_channels(audio, out_path.name)
    if x.shape[0] not in AUDIO_LAYOUTS:
        raise UsageError(f"mux takes mono or stereo audio, not {x.shape[0]} channels")
    if not (math.isfinite(start) and start >= 0):
        raise UsageError(f"start must be a non-negative number of seconds, not {start!r}")
    end = start + (x.shape[1] / sample_rate if duration is None else duration)
    target = AtomicWrite(out_path, force)

    with open_media(video_path) as source:
        stream = video_stream(source, video_path)
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
                if timecode is not None:  # the copy starts at the keyframe `origin`
                    shift = round(origin * tb * timecode.rate)
                    label = str(dataclasses.replace(timecode, frames=timecode.frames + shift))
                    out_video.metadata["timecode"] = label
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
                        f"into {suffix} ({why(err)}); pass --no-video for the stems alone"
                    ) from None
    return out_path


def mux_suffix(video_path: str | os.PathLike, preferred: str) -> str:
    """`preferred` (a key of MUX_FORMATS) when its container takes the clip's video codec as
    it is, else ".mkv" (Matroska takes nearly every codec)."""
    video_path = existing_file(video_path)
    with open_media(video_path) as source:
        codec = video_stream(source, video_path).codec_context.name
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
    for packet in packets_from(source, stream, start):
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
        data = pcm24(x).T.reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(data, format=sample_format, layout=stream.layout.name)
    frame.sample_rate = rate
    frame.pts = 0
    frame.time_base = Fraction(1, rate)
    return stream.encode(frame) + stream.encode(None)
