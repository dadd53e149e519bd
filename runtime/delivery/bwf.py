"""Broadcast WAV: the `bext` chunk (EBU Tech 3285 version 2) and an `iXML` chunk, added to a
WAV file soundfile wrote, so a stem lands at its timecode in an editor and carries its
loudness.

    add_chunks(path, [bext_chunk(...), ixml_chunk(...)])

The PCM is not touched: the file is rewritten with the new chunks before its `data` chunk.
"""

import math
import os
import struct
import unicodedata
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

from ..errors import OutputError
from .loudness import Loudness
from .timecode import Timecode, rate_text

# Description, Originator, OriginatorReference, OriginationDate, OriginationTime,
# TimeReference (samples since midnight, 64 bits), Version, UMID, the five loudness fields
# (signed, 1/100 LU or dB), Reserved; CodingHistory follows.
BEXT = struct.Struct("<256s32s32s10s8sQH64s5h180s")
BEXT_VERSION = 2
UNSET = 0x7FFF  # a loudness field with no value (e.g. silence has no loudness)
IXML_VERSION = "2.10"
RIFF_LIMIT = 2**32 - 1  # bytes: beyond it a WAV needs RF64; write FLAC instead


def bext_chunk(
    *,
    description: str,
    originator: str,
    reference: str,
    created: datetime,
    time_reference: int,
    loudness: Loudness,
    coding_history: list[str],
) -> tuple[bytes, bytes]:
    """The `bext` chunk: (b"bext", payload). Text is ASCII (Tech 3285): accents are dropped,
    other characters replaced; each coding history line ends with CR LF (EBU R 98)."""
    fields = BEXT.pack(
        _ascii(description, 256),
        _ascii(originator, 32),
        _ascii(reference, 32),
        created.strftime("%Y-%m-%d").encode(),
        created.strftime("%H:%M:%S").encode(),
        time_reference,
        BEXT_VERSION,
        bytes(64),  # no UMID
        _hundredths(loudness.integrated),
        _hundredths(loudness.range),
        _hundredths(loudness.true_peak),
        _hundredths(loudness.max_momentary),
        _hundredths(loudness.max_short_term),
        bytes(180),
    )
    history = "".join(f"{line}\r\n" for line in coding_history)
    return b"bext", fields + _ascii(history, len(history))


def coding_history_line(rate: int, bits: int, channels: int, text: str) -> str:
    """One EBU R 98 line: 'A=PCM,F=48000,W=24,M=mono,T=text' (no T without text; commas in
    the text, which would start a new field, become semicolons)."""
    mode = {1: "mono", 2: "stereo"}.get(channels, "multichannel")
    line = f"A=PCM,F={rate},W={bits},M={mode}"
    return f"{line},T={text.replace(',', ';')}" if text else line


def ixml_chunk(
    *,
    project: str,
    note: str,
    tracks: list[str],
    timecode: Timecode,
    time_reference: int,
    sample_rate: int,
    bits: int,
) -> tuple[bytes, bytes]:
    """The `iXML` chunk: (b"iXML", UTF-8 XML) with the timecode rate, drop-frame flag and the
    start as samples since midnight, as production recorders write them."""
    root = ET.Element("BWFXML")
    _add(root, "IXML_VERSION", IXML_VERSION)
    _add(root, "PROJECT", project)
    _add(root, "NOTE", note)
    speed = ET.SubElement(root, "SPEED")
    rate = rate_text(timecode.rate)
    for tag, value in (
        ("MASTER_SPEED", rate),
        ("CURRENT_SPEED", rate),
        ("TIMECODE_RATE", rate),
        ("TIMECODE_FLAG", "DF" if timecode.drop_frame else "NDF"),
        ("FILE_SAMPLE_RATE", sample_rate),
        ("AUDIO_BIT_DEPTH", bits),
        ("TIMESTAMP_SAMPLE_RATE", sample_rate),
        ("TIMESTAMP_SAMPLES_SINCE_MIDNIGHT_HI", time_reference >> 32),
        ("TIMESTAMP_SAMPLES_SINCE_MIDNIGHT_LO", time_reference & 0xFFFFFFFF),
    ):
        _add(speed, tag, value)
    track_list = ET.SubElement(root, "TRACK_LIST")
    _add(track_list, "TRACK_COUNT", len(tracks))
    for i, name in enumerate(tracks, 1):
        track = ET.SubElement(track_list, "TRACK")
        _add(track, "CHANNEL_INDEX", i)
        _add(track, "INTERLEAVE_INDEX", i)
        _add(track, "NAME", name)
    return b"iXML", ET.tostring(root, encoding="UTF-8", xml_declaration=True)


def add_chunks(path: Path, chunks: list[tuple[bytes, bytes]]) -> None:
    """Rewrite the WAV file at `path` with `chunks` ((id, payload) pairs) before its `data`
    chunk; the other chunks are kept as they are. The new file replaces the old one only when
    complete."""
    path = Path(path)
    with open(path, "rb") as src:
        riff, _, wave = struct.unpack("<4sI4s", src.read(12))
        if riff != b"RIFF" or wave != b"WAVE":
            raise ValueError(f"{path.name} is not a RIFF WAVE file")
        layout = []  # (id, offset of the payload, payload size)
        while header := src.read(8):
            ck, size = struct.unpack("<4sI", header)
            layout.append((ck, src.tell(), size))
            src.seek(size + size % 2, os.SEEK_CUR)
        if not any(ck == b"data" for ck, _, _ in layout):
            raise ValueError(f"{path.name} has no data chunk")
        new = [(ck, None, len(payload), payload) for ck, payload in chunks]
        ordered = []
        for ck, offset, size in layout:
            if ck == b"data":
                ordered += new
            ordered.append((ck, offset, size, None))
        total = 4 + sum(8 + size + size % 2 for _, _, size, _ in ordered)
        if total > RIFF_LIMIT:
            raise OutputError(
                f"{path.name} would be {total / 2**30:.1f} GiB, over the 4 GiB a WAV file can "
                "hold; use --format flac"
            )
        tmp = path.with_name(f"{path.name}.bwf")
        try:
            with open(tmp, "xb") as dst:  # a new file: the user's umask sets its mode
                dst.write(struct.pack("<4sI4s", b"RIFF", total, b"WAVE"))
                for ck, offset, size, payload in ordered:
                    dst.write(struct.pack("<4sI", ck, size))
                    if payload is None:
                        src.seek(offset)
                        _copy(src, dst, size)
                    else:
                        dst.write(payload)
                    if size % 2:
                        dst.write(b"\0")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _copy(src, dst, size: int) -> None:
    while size:
        block = src.read(min(size, 1 << 20))
        if not block:
            raise ValueError(f"{src.name} is truncated")
        dst.write(block)
        size -= len(block)


def _ascii(text: str, size: int) -> bytes:
    """ASCII, at most `size` bytes: 'café' -> 'cafe', other characters -> '?'."""
    plain = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in plain if not unicodedata.combining(c))
    return plain.encode("ascii", "replace")[:size]


def _hundredths(value: float) -> int:
    """A loudness field: round(100 * value) as int16, UNSET for no value."""
    if not math.isfinite(value):
        return UNSET
    return max(-0x8000, min(0x7FFE, round(100 * value)))


def _add(parent: ET.Element, tag: str, value) -> None:
    ET.SubElement(parent, tag).text = str(value)
