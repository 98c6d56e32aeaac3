"""Samples that keep failing are set aside, and a run whose samples fail too often stops.

A drawn sample fails when its video cannot be decoded, the engine refuses its request (or it
does not fit the model), or none of its responses could be scored. It then costs only itself:
the step goes on with the others. After `data.max_sample_failures` failures it is quarantined:
never drawn again in this run, listed with its reasons in the run directory's quarantine.jsonl,
and kept across resumes (in every checkpoint). Before, a request that always failed made the
pool raise, and the checkpointed sampler drew the same prompt again on every resume.

Over the last `data.failure_window_samples` samples drawn, more than `data.max_failed_fraction`
failing stops the run with the reasons: the data or the rewards went bad mid-run (a mount that
vanished, a reward service down), which no quarantine fixes.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILE = "quarantine.jsonl"


class FailingData(RuntimeError):
    """Too many of the recent samples failed."""


@dataclass
class SampleFailures:
    """Failure counts per sample, the quarantined ones, and the recent window of draws."""

    max_failures: int
    window: int
    max_fraction: float
    folder: Path | None = None
    """Where quarantine.jsonl goes (None: nowhere, e.g. in tests)."""
    counts: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, list[str]] = field(default_factory=dict)
    recent: deque[str | None] = field(default_factory=deque)

    def observe(self, drawn: Sequence[str], failed: Mapping[str, str]) -> list[str]:
        """Record a round: the sample ids drawn and, for those that failed, why. Returns the ids
        quarantined by it; raises FailingData when the window fails too often."""
        newly = []
        for sample_id in drawn:
            reason = failed.get(sample_id)
            self.recent.append(None if reason is None else f"{sample_id}: {reason}")
            if reason is None:
                continue
            self.counts[sample_id] = self.counts.get(sample_id, 0) + 1
            if self.counts[sample_id] >= self.max_failures and sample_id not in self.quarantined:
                self.quarantined[sample_id] = [reason]
                newly.append(sample_id)
                self._write(sample_id, reason)
        while len(self.recent) > self.window:
            self.recent.popleft()
        self._check()
        return newly

    def _check(self) -> None:
        reasons = [r for r in self.recent if r is not None]
        if len(self.recent) >= self.window and len(reasons) > self.max_fraction * len(self.recent):
            listed = "\n  ".join(reasons[-10:])
            raise FailingData(
                f"{len(reasons)} of the last {len(self.recent)} samples drawn failed (more than "
                f"data.max_failed_fraction = {self.max_fraction:.0%}); the last reasons:\n  {listed}"
            )

    def _write(self, sample_id: str, reason: str) -> None:
        log.warning("sample %s quarantined after %d failures: %s", sample_id, self.counts[sample_id], reason)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            with (self.folder / FILE).open("a", encoding="utf-8") as handle:
                handle.write(self._entry(sample_id, reason) + "\n")

    def state_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "quarantined": dict(self.quarantined),
            "recent": list(self.recent),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from a checkpoint's state; quarantine.jsonl is written again from it, so that
        samples quarantined after that checkpoint (in steps the resume takes again) are not
        listed twice."""
        self.counts = dict(state.get("counts", {}))
        self.quarantined = {k: list(v) for k, v in state.get("quarantined", {}).items()}
        self.recent = deque(state.get("recent", []))
        if self.folder is not None and (self.folder / FILE).exists():
            lines = [self._entry(sample_id, reasons[-1]) for sample_id, reasons in self.quarantined.items()]
            partial = self.folder / f"{FILE}.partial"
            partial.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
            partial.replace(self.folder / FILE)

    def _entry(self, sample_id: str, reason: str) -> str:
        return json.dumps(
            {"sample": sample_id, "failures": self.counts.get(sample_id, 0), "last_reason": reason}
        )
