"""Writing stems: 24-bit PCM WAV or FLAC, atomically, never over an existing file unless asked."""

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import OutputError, UsageError
from .audio import resample
from .files import soundfile, why

STEM_FORMATS = {".wav": "WAV", ".flac": "FLAC"}


def pcm24(wav: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int32 holding 24-bit PCM in its top 24 bits (what PCM_24 writers take)."""
    q = np.clip(np.round(wav.astype(np.float64) * 2**23), -(2**23), 2**23 - 1)
    return q.astype(np.int32) << 8


def as_channels(wav, what: str) -> np.ndarray:
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
    x = as_channels(wav, path.name)
    if out_rate and out_rate != sample_rate:
        x = resample(torch.from_numpy(x), sample_rate, out_rate).numpy()
        sample_rate = out_rate
    with AtomicWrite(path, force) as tmp:
        soundfile.write(
            tmp, pcm24(x).T, sample_rate, subtype="PCM_24", format=STEM_FORMATS[f".{fmt}"]
        )
    return path


class AtomicWrite:
    """Write to a temporary file beside `path`, then os.replace it into place (or delete it).

    Checks up front, so a refused output costs no work: `with AtomicWrite(p, force) as tmp:`.
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
            raise OutputError(f"cannot write {self.path}: {why(err)}") from None
        os.close(fd)
        # mkstemp makes the file 0600; a written file gets what the user's umask gives.
        os.chmod(self.tmp, file_mode())
        return self.tmp

    def __exit__(self, kind, err, tb):
        if kind is None:
            try:
                os.replace(self.tmp, self.path)
                return False
            except OSError as err:
                os.unlink(self.tmp)
                raise OutputError(f"cannot write {self.path}: {why(err)}") from None
        os.unlink(self.tmp)
        return False


def file_mode() -> int:
    """The permissions a new file gets under the user's umask (temporary files are made 0600;
    a written file should look like any other the user makes)."""
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return 0o666 & ~mask
