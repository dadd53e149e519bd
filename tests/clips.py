"""Test clips made with PyAV (small: a few seconds of 64x48 H.264), good and bad."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def make_clip(
    path: Path,
    frames: int = 50,
    fps: Fraction | int = 25,
    size: tuple[int, int] = (64, 48),
    pts_ms: list[int] | None = None,
    gop: int = 10,
    rotation: int | None = None,
    hflip: bool = False,
    image=None,
    audio_rate: int | None = None,
    faststart: bool = False,
    pix_fmt: str = "yuv420p",
    codec: str = "libx264",
    container: str | None = None,
) -> Path:
    """An H.264 clip (B-frames on, a keyframe every `gop` frames, no scene-cut keyframes) whose
    frames differ from each other; pts_ms gives explicit timestamps in milliseconds. `pix_fmt`
    "yuv420p10le" makes 10-bit H.264; `codec` and `container` (default: from the suffix) others."""
    width, height = size
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format=container, container_options=options) as out:
        codec_options = {"g": str(gop), "sc_threshold": "0"} if codec == "libx264" else {}
        video = out.add_stream(codec, rate=fps, options=codec_options)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        if pts_ms is not None:
            video.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            video.set_display_rotation(rotation, hflip=hflip)
        audio = out.add_stream("aac", rate=audio_rate, layout="mono") if audio_rate else None
        y, x = np.mgrid[0:height, 0:width]
        for i in range(frames):
            if image is None:
                img = np.stack([(x * 3 + i * 5) % 256, (y * 4) % 256, np.full_like(x, 9 * i % 256)])
                img = img.transpose(1, 2, 0).astype(np.uint8)
            else:
                img = image
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts_ms is None:
                frame.pts = i
            else:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if audio:
            _encode_tone(out, audio, audio_rate, frames / fps)
    return path


def _encode_tone(out, stream, rate: int, seconds: float):
    tone = 0.1 * np.sin(np.arange(int(rate * seconds)) * 0.05, dtype=np.float32)
    frame = av.AudioFrame.from_ndarray(tone[None], format="fltp", layout="mono")
    frame.sample_rate, frame.pts = rate, 0
    out.mux(stream.encode(frame))
    out.mux(stream.encode())


def _truncated(tmp_path: Path) -> Path:
    full = make_clip(tmp_path / "full.mp4", frames=100)  # index (moov) at the end: cut off
    path = tmp_path / "cut.mp4"
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _packet_40(tmp_path: Path) -> tuple[bytearray, av.Packet]:
    """A 4 s clip with its index first (bytes), and where its 41st video packet lies."""
    full = make_clip(tmp_path / "full.mp4", frames=100, faststart=True)
    with av.open(str(full)) as container:
        packet = [p for p in container.demux(video=0) if p.size][40]
    return bytearray(full.read_bytes()), packet


def _packet_aligned_cut(tmp_path: Path) -> Path:
    data, packet = _packet_40(tmp_path)
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: packet.pos + packet.size])
    return path


def _corrupt_packet(tmp_path: Path) -> Path:
    data, packet = _packet_40(tmp_path)
    data[packet.pos : packet.pos + 4] = b"\xff" * 4  # an impossible NAL unit length
    path = tmp_path / "bad.mp4"
    path.write_bytes(data)
    return path


def _audio_only(tmp_path: Path) -> Path:
    path = tmp_path / "sound.m4a"
    with av.open(str(path), "w", format="mp4") as out:
        _encode_tone(out, out.add_stream("aac", rate=16000, layout="mono"), 16000, 1.0)
    return path


def _audio_with_cover(tmp_path: Path) -> Path:
    path = tmp_path / "song.mp4"
    with av.open(str(path), "w") as out:
        audio = out.add_stream("aac", rate=16000, layout="mono")
        cover = out.add_stream("png", rate=1)
        cover.width, cover.height, cover.pix_fmt = 32, 32, "rgb24"
        cover.disposition = av.stream.Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        picture.pts = 0
        out.mux(cover.encode(picture) + cover.encode())
        _encode_tone(out, audio, 16000, 1.0)
    return path


def _no_keyframes(tmp_path: Path) -> Path:
    """A video stream whose packets decode to nothing: every keyframe removed."""
    full = make_clip(tmp_path / "full.mp4", frames=40)
    path = tmp_path / "nokey.mp4"
    with av.open(str(full)) as source, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(video=0):
            if packet.dts is not None and not packet.is_keyframe:
                packet.stream = stream
                out.mux(packet)
    return path


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("sheep bleating in a field\n" * 50)
    return path


def _image(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "rgb24"
        picture = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
        picture.pts = 0
        out.mux(stream.encode(picture) + stream.encode())
    return path


def _garbage(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.mp4"
    path.touch()
    return path


def vfr_pts_ms(frames: int = 50) -> list[int]:
    """Presentation times of a variable-rate clip: 50 and 17 fps alternating, as phones vary."""
    return np.cumsum([0] + [20, 60] * frames)[:frames].tolist()


BAD_INPUTS = {
    "missing": (lambda p: p / "nope.mp4", "does not exist"),
    "directory": (lambda p: p, "is a directory"),
    "text file": (_text, "is text, not a media file"),
    "still image": (_image, "is a still image"),
    "random bytes": (_garbage, "is not a media file ffmpeg can read"),
    "zero bytes": (_empty, "is empty (0 bytes)"),
    "truncated (index at the end)": (_truncated, "or is truncated"),
    "corrupt packet": (_corrupt_packet, "is damaged or truncated: decoding failed after"),
    "truncated at a packet": (_packet_aligned_cut, "is truncated: its header says 4.00 s"),
    "audio only": (_audio_only, "has no video stream"),
    "audio with cover art": (_audio_with_cover, "has no video stream"),
    "no decodable frames": (_no_keyframes, "no decodable frames"),
    "shorter than a segment": (
        lambda p: make_clip(p / "short.mp4", frames=15),
        "at least 0.64 s (16 frames at 25 fps)",
    ),
    "too small": (lambda p: make_clip(p / "tiny.mp4", frames=20, size=(8, 8)), "is 8x8"),
    "too large": (lambda p: make_clip(p / "wide.mp4", frames=1, size=(8208, 16)), "is 8208x16"),
    "mirrored": (
        lambda p: make_clip(p / "flip.mp4", frames=20, rotation=90, hflip=True),
        "mirrored",
    ),
}
