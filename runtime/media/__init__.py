"""Media files: decode the frames the model needs, resample, write stems, mux the stem into
the clip. Callers use this package's names; its modules import one another directly.

    files   opening a file (PyAV, soundfile on first use) and the checks every reader shares
    video   decoding a clip's windows bit-exactly as the official reader (and probing it)
    edit    source ranges of several clips played back to back, decoded as one picture
    audio   the resampler, and reading an audio track (a mixture to separate)
    write   stems written atomically as 24-bit WAV/FLAC
    mux     the stem beside the clip's video stream, stream-copied
"""

from .audio import read_audio, resample
from .edit import Edit, Segment
from .files import decoder_version, existing_file
from .mux import FALLBACK_CONTAINER, MUX_FORMATS, mux, mux_suffix
from .video import (
    ClipInfo,
    FrameTrack,
    Video,
    clip_duration,
    decode_video,
    decode_windows,
    has_video,
    probe,
    resize,
    to_model_input,
)
from .write import write_audio

__all__ = [
    "FALLBACK_CONTAINER",
    "MUX_FORMATS",
    "ClipInfo",
    "Edit",
    "FrameTrack",
    "Segment",
    "Video",
    "clip_duration",
    "decode_video",
    "decode_windows",
    "decoder_version",
    "existing_file",
    "has_video",
    "mux",
    "mux_suffix",
    "probe",
    "read_audio",
    "resample",
    "resize",
    "to_model_input",
    "write_audio",
]
