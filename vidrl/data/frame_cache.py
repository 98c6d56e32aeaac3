"""An on-disk cache of decoded clips: one .npz file per (video file, sampling settings).

The key hashes the file's identity (absolute path, size, modification time in ns) with
the settings that change the frames, so an edited video or a different fps/pixel budget
misses instead of returning stale frames. Entries are plain `np.savez` archives read
with `allow_pickle=False` (no code runs on load), written to a temporary file and
renamed, so concurrent writers and killed processes never leave a half-written entry
under the real name. An unreadable entry counts as a miss and is overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
"""Part of every key: bump it when what decoding produces changes, to drop old entries."""

REQUIRED_ARRAYS = ("frames", "timestamps", "frame_indices", "fps", "duration")


def entry_path(
    cache_dir: str | os.PathLike[str],
    video: Path,
    identity: tuple[str, int, int],
    settings: Mapping[str, Any],
) -> Path:
    """Where the clip of `video` decoded with `settings` is cached.

    identity: (absolute path, size in bytes, mtime in ns) of the video file.
    """
    payload = json.dumps(
        {"version": FORMAT_VERSION, "file": list(identity), "settings": dict(settings)},
        sort_keys=True,
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:32]
    # The stem keeps entries recognisable by eye; the digest alone makes them unique.
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", video.stem)[:48]
    return Path(cache_dir) / f"{stem}-{digest}.npz"


def load(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays stored at `path`, or None when absent, unreadable or incomplete."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in REQUIRED_ARRAYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    return arrays if _consistent(arrays) else None


def _consistent(arrays: Mapping[str, np.ndarray]) -> bool:
    frames = arrays["frames"]
    count = frames.shape[0] if frames.ndim == 4 else -1
    return (
        frames.dtype == np.uint8
        and frames.ndim == 4
        and frames.shape[-1] == 3
        and arrays["timestamps"].shape == (count,)
        and arrays["frame_indices"].shape == (count,)
        and arrays["fps"].shape == ()
        and arrays["duration"].shape == ()
    )


def store(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write `arrays` to `path` atomically (a temporary file in the same folder, renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
