"""Peak memory of this process since the last reset: host (resident set) and, on GPUs, device.

Host: Linux's VmHWM (the high-water mark of the resident set), reset by writing 5 to
/proc/self/clear_refs. It counts every resident byte of the process (the Python heap, torch's
allocations, the model's shards, mapped files that were read), which is what a node's memory
limit sees. Where /proc is missing the host figures are absent rather than wrong.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class PeakMemory:
    """reset() then read() -> {"peak_host_bytes": ..., "peak_device_bytes": ...} since the reset."""

    def reset(self) -> None:
        with contextlib.suppress(OSError):
            _CLEAR_REFS.write_text("5")
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def host(self) -> int:
        """Peak host bytes since the reset (0 where /proc is not readable)."""
        return peak_host_bytes() or 0

    def read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        host = peak_host_bytes()
        if host is not None:
            out["peak_host_bytes"] = float(host)
        if torch.cuda.is_available():
            out["peak_device_bytes"] = float(torch.cuda.max_memory_allocated())
        return out


def peak_host_bytes() -> int | None:
    """VmHWM of this process in bytes, or None where /proc is not readable."""
    try:
        match = re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text())
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None
