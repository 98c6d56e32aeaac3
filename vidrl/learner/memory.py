"""Host memory of a learner rank: its peak since a reset, and how freed memory goes back.

Peak: Linux's VmHWM (the high-water mark of the resident set), reset by writing 5 to
/proc/self/clear_refs. It counts every resident byte of the process (the Python heap, torch's
allocations, the model's shards, mapped files that were read), which is what a node's memory
limit sees. Where /proc is missing the host figures are absent rather than wrong.

Freed memory (`learner.host_malloc`, applied by `HostMalloc` when a rank starts). torch frees
its CPU tensors to glibc's malloc, which serves a request above its mmap threshold from a
mapping of its own (unmapped when freed: back to the system, at the price of page faults when
the next one is touched) and a smaller one from the heap, where a freed block under a live one
is never given back. glibc raises that threshold each time a mapped block is freed, up to
32 MiB, so soon after a learner starts its activations and gradient buckets come from the heap
and the resident set grows by GBs over a step that needs far less. Fixing the threshold stops
the raise; where to fix it trades memory against page faults. Measured side by side on this
project's 2-core AMX machine (bench/learner.py's tiny section: LearnerGroup step over a plain
torch loop, whose own process keeps glibc's defaults and took 0.79-1.41 s over the runs, hence
the spread; bench/prefix.py's 19M-parameter model at the shape of video RL, in one process;
bench/memory.py's 494M-parameter learner, bf16 compute, one group of 8 x 512 tokens):

    threshold        tiny 1x2 plain / shared    tiny 2x1 plain / shared   prefix shared   494M peak
                                                                              fp32 / bf16     1 / 2 ranks
    128 KiB (old)    0.60-0.64x / 1.75-1.77x    0.77-0.80x / 2.25-2.30x   5.73 / 4.97 s   10.85 / 6.39 GB
    4 MiB (default)  0.86-0.91x / 2.81-2.85x    1.01-1.04x / 2.88-3.07x   4.62 / 3.10 s   11.22 / 6.71 GB
    32 MiB           1.15x / 3.81x              1.28x / 3.71x             4.27 / 2.81 s   12.99 / 9.58 GB
    none (glibc's)   0.61-1.31x / 1.46-4.47x    0.83-1.37x / 3.06-4.41x   4.37 / 2.84 s   12.90 / 9.48 GB

The trim threshold is set apart (`trim_threshold_bytes`, 128 MiB by default; glibc otherwise keeps
it equal to the mmap threshold): the heap's top, where a micro-batch's blocks under 4 MiB come
and go, is then kept for the next micro-batch instead of being handed back and faulted in again
each time. Measured on 2026-12-07's machine (AMX; load 1.2-2.6), bench/learner.py --quick, 3 runs
each, in turn: mmap 4 MiB with trim 4 MiB (the old default) 1x2 plain / shared 0.81-0.91x /
2.91-3.05x, 2x1 0.91-1.04x / 3.09-3.22x; with trim 128 MiB 0.99-1.03x / 3.21-3.36x and
1.20-1.30x / 3.69-3.85x; with trim 32 MiB (one run) 0.93x / 2.99x and 1.24x / 3.79x.
bench/memory.py's 494M learner (bf16, 1 / 2 ranks), step peak: trim 128 MiB 11.25 / 6.69 GB,
trim 4 MiB in the same session MEM_DEFAULT; at most 128 MiB more per arena is kept by design.

malloc_trim after every micro-batch or step instead of a fixed threshold (`trim_every`) ran at
0.81-0.94x plain and 2.68-2.87x shared; jemalloc and tcmalloc (Debian's packages, preloaded into
the whole benchmark) ran like 4 MiB (0.91-1.04x plain, 2.98-3.03x shared) but are not on PyPI, so
`make` cannot install them everywhere. So the default is a fixed 4 MiB mmap threshold with a
128 MiB trim threshold: it keeps the memory the 128 KiB threshold won and runs the tiny step at
or above the plain loop's speed in both layouts (the table above was measured with the two
thresholds tied, before they were set apart).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import re
from pathlib import Path
from typing import Any

import torch

from vidrl.learner.config import HostMallocSettings

log = logging.getLogger(__name__)

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


def resident_anon_bytes() -> int | None:
    """Anonymous memory resident now (RssAnon: this process's own allocations, tensors and heap,
    without the pages of mapped files such as a memory-mapped checkpoint, which are page cache
    the kernel can drop), or None where /proc is not readable."""
    return _status_bytes("RssAnon")


def peak_host_bytes() -> int | None:
    """VmHWM of this process in bytes, or None where /proc is not readable."""
    return _status_bytes("VmHWM")


def _status_bytes(field: str) -> int | None:
    try:
        match = re.search(rf"{field}:\s+(\d+) kB", _STATUS.read_text())
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


# mallopt's parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


class HostMalloc:
    """A learner rank's host-memory policy (`learner.host_malloc`): `apply()` once when the rank
    starts, `after(point)` at the end of each micro-batch and each step."""

    def __init__(self, settings: HostMallocSettings) -> None:
        self.settings = settings
        self._libc: Any = None

    def apply(self, libc: Any = None) -> bool:
        """Set the fixed mmap and trim thresholds, if any; False where the C library is not glibc.
        `libc`: the C library to call (None: the one this process runs on)."""
        try:
            libc = libc or ctypes.CDLL(None)  # the C library this process already runs on
            mallopt, _ = libc.mallopt, libc.malloc_trim  # both glibc's
        except (OSError, AttributeError):
            return False
        self._libc = libc
        threshold = self.settings.mmap_threshold_bytes
        if threshold is None:
            return True
        trim = self.settings.trim_threshold_bytes or threshold
        done = mallopt(M_MMAP_THRESHOLD, threshold) == 1 and mallopt(M_TRIM_THRESHOLD, trim) == 1
        log.debug("host malloc: mmap threshold %d bytes, trim threshold %d (%s)", threshold, trim, done)
        return done

    def after(self, point: str) -> None:
        """`point` ("microbatch" or "step") has ended: trim the heap if the policy says so."""
        if self._libc is not None and self.settings.trim_every == point:
            self._libc.malloc_trim(0)
