"""Peak memory per part and end to end: the process's resident set on the CPU (its high-water
mark, which Linux resets on request), the allocator's peak on CUDA. Weights count: this is what
must fit in the machine.

    meter = PeakMeter(torch.device("cpu"))
    pipe.meter = meter                       # every Run of the pipeline reports to it
    pipe.generate(...)
    meter.parts   # {"video_trunk": bytes, "sampling": bytes, ...}; meter.total: the whole run
"""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class PeakMeter:
    """Peaks in bytes of the parts measured through `part(name)` (the largest when a part runs
    several times) and of everything since `start()` (`total`); None where the platform cannot
    tell (no /proc)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.parts: dict[str, int] = {}
        self.total: int | None = None

    def start(self) -> None:
        self.parts, self.total = {}, None
        self._reset()

    def stop(self) -> int | None:
        """The peak since `start()`, parts and the time between them alike."""
        self._fold(self._read())
        return self.total

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        self._fold(self._read())  # what ran before the part counts for the total
        self._reset()
        try:
            yield
        finally:
            peak = self._read()
            self._fold(peak)
            if peak is not None:
                self.parts[name] = max(self.parts.get(name, 0), peak)

    def _fold(self, peak: int | None) -> None:
        if peak is not None:
            self.total = peak if self.total is None else max(self.total, peak)

    def _reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            _CLEAR_REFS.write_text("5")  # "5": reset the resident set's high-water mark
        except OSError:
            pass

    def _read(self) -> int | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return peak_rss()


def peak_rss() -> int | None:
    """The process's resident-set high-water mark (VmHWM) in bytes; None without /proc."""
    try:
        match = re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text())
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None
