"""Vorbis comments in a FLAC stem: what the BWF chunks carry for WAV (prompt, model, seed and
the timecode position), as `NAME=value` tags every FLAC reader shows (FLAC format spec §
METADATA_BLOCK_VORBIS_COMMENT; the comment layout is Vorbis I §5).

The names: TITLE and DESCRIPTION (the prompt), ENCODER, and SELVA_VARIANT, SELVA_SEED,
SELVA_STEPS, SELVA_CFG for the model; TIMECODE (the stem's start, SMPTE), TIMECODE_RATE
(`30000/1001`) and TIME_REFERENCE (samples since midnight at the file's rate, as BWF's
TimeReference) for placing it on a timeline.
"""

import os
import struct
from pathlib import Path

from ..errors import OutputError

VORBIS_COMMENT = 4
PADDING = 1
LAST = 0x80


def flac_comments(path: Path, vendor: str, comments: list[tuple[str, str]]) -> None:
    """Rewrite the FLAC file at `path` with one VORBIS_COMMENT block holding `comments` (name,
    value) pairs, replacing any the encoder wrote (and dropping padding); audio frames and the
    other metadata blocks are kept as they are. The new file replaces the old one only when
    complete."""
    path = Path(path)
    with open(path, "rb") as src:
        if src.read(4) != b"fLaC":
            raise OutputError(f"{path.name} is not a FLAC file")
        blocks = []  # (type, payload) of the metadata blocks to keep
        while True:
            header = src.read(4)
            if len(header) < 4:
                raise OutputError(f"{path.name}: its FLAC metadata is truncated")
            kind, size = header[0] & 0x7F, int.from_bytes(header[1:], "big")
            payload = src.read(size)
            if kind not in (VORBIS_COMMENT, PADDING):
                blocks.append((kind, payload))
            if header[0] & LAST:
                break
        blocks.append((VORBIS_COMMENT, _comment_block(vendor, comments)))
        frames = src.tell()
        tmp = path.with_name(f"{path.name}.tags")
        try:
            with open(tmp, "xb") as dst:  # a new file: the user's umask sets its mode
                dst.write(b"fLaC")
                for i, (kind, payload) in enumerate(blocks):
                    if len(payload) >= 1 << 24:
                        raise OutputError(f"{path.name}: a FLAC metadata block over 16 MiB")
                    flag = LAST if i == len(blocks) - 1 else 0
                    dst.write(bytes([kind | flag]) + len(payload).to_bytes(3, "big") + payload)
                src.seek(frames)
                while block := src.read(1 << 20):
                    dst.write(block)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _comment_block(vendor: str, comments: list[tuple[str, str]]) -> bytes:
    """Vorbis comment packet without framing bit: little-endian lengths, UTF-8 text."""

    def field(text: str) -> bytes:
        data = text.encode("utf-8")
        return struct.pack("<I", len(data)) + data

    for name, _ in comments:
        if not name or not all(0x20 <= ord(c) <= 0x7D and c != "=" for c in name):
            raise ValueError(f"{name!r} is not a Vorbis comment field name")
    body = b"".join(field(f"{name}={value}") for name, value in comments)
    return field(vendor) + struct.pack("<I", len(comments)) + body
