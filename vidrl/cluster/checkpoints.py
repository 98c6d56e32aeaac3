"""The run directory's checkpoints: written whole or not at all, checked before they are loaded,
and only the newest `trainer.keep_checkpoints` kept.

    checkpoints/.step_000050.partial/   a save in progress (removed at the next start)
    checkpoints/step_000050/            a finished one: COMPLETE written last inside it, every
                                        file and folder fsynced, then the folder renamed into
                                        place and its parent fsynced
    sft/                                the warm start, written the same way (`write`)

A save cut short (a kill, a full disk, a power loss) leaves a `.partial` folder, never a
`step_*` one, so a resume never reads half a checkpoint, and a later save never writes into
one: stale shards of another run (torch's Hugging Face storage reads every *.safetensors in a
folder) cannot mix in. A resume takes the newest checkpoint whose files pass `problems` and
falls back to the one before it otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

from vidrl.learner.checkpoint import fsync_files

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
PARTIAL_SUFFIX = ".partial"
REPLACED_SUFFIX = ".replaced"


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:06d}"


def partial_dir(final: Path) -> Path:
    """Where `final` is written before it is renamed into place."""
    return final.with_name(f".{final.name}{PARTIAL_SUFFIX}")


def complete(root: Path) -> list[Path]:
    """The finished checkpoints under `root`, oldest first."""
    if not root.exists():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir() and (p / COMPLETE).exists())


def remove_partial(root: Path) -> list[Path]:
    """Remove saves that were cut short (what a killed run left); returns what was removed. A
    checkpoint set aside to be replaced comes back if its replacement never arrived."""
    if not root.exists():
        return []
    for aside in root.glob(f".*{REPLACED_SUFFIX}"):
        final = root / aside.name.removeprefix(".").removesuffix(REPLACED_SUFFIX)
        if final.exists():
            shutil.rmtree(aside)
        else:
            aside.rename(final)
    removed = sorted(root.glob(f".*{PARTIAL_SUFFIX}"))
    for folder in removed:
        shutil.rmtree(folder)
        log.warning("removed a checkpoint that was cut short: %s", folder)
    return removed


def write(final: Path, fill: Callable[[Path], None]) -> Path:
    """Write the folder `final` atomically: `fill(folder)` writes its files into a partial folder
    beside it, which is then marked COMPLETE, fsynced, renamed into place, and its parent fsynced.
    A folder of that name already there is replaced whole."""
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    partial = partial_dir(final)
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()
    fill(partial)
    (partial / COMPLETE).write_text("ok\n")
    fsync_tree(partial)
    replaced = root / f".{final.name}{REPLACED_SUFFIX}"
    if final.exists():
        final.rename(replaced)
    partial.rename(final)
    _fsync_dir(root)
    if replaced.exists():
        shutil.rmtree(replaced)
    return final


def prune(root: Path, keep: int) -> list[Path]:
    """Remove all but the newest `keep` finished checkpoints (0: keep all); returns the removed."""
    done = complete(root)
    removed = done[:-keep] if keep and len(done) > keep else []
    for folder in removed:
        shutil.rmtree(folder)
    return removed


def problems(folder: Path) -> list[str]:
    """What is wrong with a finished checkpoint's files, read without loading them (empty: none
    found): every safetensors file whole by its header, the trainer state readable."""
    found = []
    try:
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        found.append(f"trainer_state.json: {err}")
    tensors = sorted(folder.rglob("*.safetensors"))
    if not any(p.parent.name == "state" for p in tensors):
        found.append("state/: no model or optimizer shards")
    for file in tensors:
        problem = _safetensors_problem(file)
        if problem:
            found.append(f"{file.relative_to(folder)}: {problem}")
    return found


def _safetensors_problem(file: Path) -> str | None:
    """Why a safetensors file is not whole (its header must parse and its size must be the
    header's length plus the largest data offset), or None."""
    try:
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error) as err:
        return f"unreadable header ({err})"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + length + max(ends, default=0)
    size = file.stat().st_size
    return None if size == expected else f"{size} bytes, its header says {expected}"


def fsync_tree(folder: Path) -> None:
    """fsync every file under `folder`, then every folder from the deepest up."""
    fsync_files(folder)
    folders = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
    for directory in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
