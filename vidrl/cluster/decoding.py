"""Videos decoded apart from the driver, a step's videos at once.

Training videos are untrusted input for a 2018 FFmpeg (decord 0.6's bundled libavcodec 58.35):
a file that crashes the decoder (a segfault cannot be caught) would take the whole run with it
if it were decoded in the driver, which under `ray job submit` also runs on the head node. So
each video is decoded in a Ray task of its own, `video.decode_workers` at a time, in Ray's
worker processes: a crash, a hang (`video.decode_timeout_seconds`) or a decoding error costs
that video's samples, each skipped with its reason, and the driver only ever holds finished
clips, which stay in the object store for the rollout workers (zero-copy).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from typing import Any

from vidrl.data.video import Clip, VideoConfig, VideoError, decode_clip

FAULT_CRASH_DECODER = "VIDRL_FAULT_CRASH_DECODER"
"""Fault-injection hook for tests: a video whose path contains this text crashes its decoding
process with SIGSEGV, as a corrupt file could crash FFmpeg."""


def decode_in_worker(path: str, cfg: VideoConfig) -> Clip:
    """Runs in a Ray worker process: the clip of one video."""
    fault = os.environ.get(FAULT_CRASH_DECODER)
    if fault and fault in path:
        os.kill(os.getpid(), signal.SIGSEGV)
    return decode_clip(path, cfg)


def decode_apart(paths: Sequence[str], cfg: VideoConfig) -> dict[str, tuple[Clip, Any] | str]:
    """path -> (clip, its object-store reference), or why it could not be decoded."""
    import ray

    task = ray.remote(decode_in_worker).options(num_cpus=0, max_retries=0)
    waiting, running, out = list(dict.fromkeys(paths)), {}, {}
    while waiting or running:
        while waiting and len(running) < cfg.decode_workers:
            path = waiting.pop(0)
            running[task.remote(path, cfg)] = (path, time.monotonic())
        ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
        for ref in ready:
            path, _ = running.pop(ref)
            out[path] = _result(ref)
        for ref, (path, started) in list(running.items()):
            if time.monotonic() - started > cfg.decode_timeout_seconds:
                ray.cancel(ref, force=True)
                running.pop(ref)
                out[path] = f"decoding took over {cfg.decode_timeout_seconds:g} s (stopped)"
    return out


def _result(ref: Any) -> tuple[Clip, Any] | str:
    import ray
    from ray.exceptions import RayError, RayTaskError

    try:
        return ray.get(ref), ref
    except RayTaskError as err:
        cause = getattr(err, "cause", None)
        return cause.reason if isinstance(cause, VideoError) else _last_line(err)
    except RayError as err:  # the worker process died: the decoder crashed
        return f"the decoder crashed ({type(err).__name__}: {_last_line(err)})"


def _last_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (lines[-1] if lines else type(err).__name__)[:300]
