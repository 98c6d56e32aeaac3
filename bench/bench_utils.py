"""Helpers shared by the benchmarks: rows of per-step metrics, interleaved timing, markdown tables."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vidrl.learner.config import HostMallocSettings

StepFn = Callable[[], dict[str, float]]


@dataclass
class Row:
    """One run's name and the metrics of each of its steps, warmup steps first."""

    name: str
    ranks: str
    layout: str
    metrics: list[dict[str, float]] = field(default_factory=list)

    def mean(self, key: str, skip: int) -> float:
        return statistics.fmean(m[key] for m in self.metrics[skip:])


def measure(runs: Sequence[tuple[Row, StepFn]], rounds: int) -> None:
    """One step of every run per round, in turn, so that all runs see the same machine load."""
    for _ in range(rounds):
        for row, step in runs:
            started = time.perf_counter()
            metrics = step()
            metrics.setdefault("wall_seconds", time.perf_counter() - started)
            row.metrics.append(metrics)


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int) -> None:
    """A markdown table whose first `text_columns` columns are text and the rest numbers."""
    rule = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    for cells in (header, rule, *rows):
        print("| " + " | ".join(cells) + " |")


def host_malloc_settings(text: str) -> HostMallocSettings:
    """learner.host_malloc from "mmap=BYTES|none,trimbytes=BYTES|tied,trim=never|microbatch|step"
    (any part may go: mmap none, trimbytes the default, trim never; tied: the mmap threshold's)."""
    fields = dict(part.split("=") for part in text.split(",") if part)
    mmap = fields.get("mmap", "none")
    return HostMallocSettings(
        mmap_threshold_bytes=None if mmap == "none" else int(mmap),
        trim_threshold_bytes=_trim_bytes(fields.get("trimbytes")),
        trim_every=fields.get("trim", "never"),
    )


def _trim_bytes(text: str | None) -> int | None:
    if text is None:
        return HostMallocSettings().trim_threshold_bytes
    return None if text == "tied" else int(text)
