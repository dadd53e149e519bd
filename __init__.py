"""selva-rt: fast, faithful text-conditioned selective video-to-audio generation."""

__version__ = "0.1.0"
