"""Bad input is skipped, logged once, counted, and stops the run only past a threshold.

A malformed record, a missing or unreadable video, timestamps outside the video: the
sample is dropped with one log line naming the file and the reason. When more than
`max_skipped_fraction` of what was read had to be dropped, something is wrong with the
data as a whole (a wrong folder, a wrong format) and `SkipLog.check` raises an error that
lists the first reasons, instead of training quietly on a sliver of the data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

FIRST_REASONS_SHOWN = 10


class DataError(ValueError):
    """The data as a whole cannot be used (too much of it is bad, or none is left)."""


class BadRecord(ValueError):
    """One record cannot be used; the reader turns this into a skip."""


@dataclass
class SkipLog:
    """Counts samples seen and skipped, with the reasons of the first few."""

    max_skipped_fraction: float = 0.05
    seen: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    def ok(self) -> None:
        self.seen += 1

    def skip(self, where: str, reason: str, counted: bool = False) -> None:
        """Record one dropped sample: `where` names the file (and record), `reason` why.

        counted: the sample was already counted as seen (dropped at a later stage).
        """
        if not counted:
            self.seen += 1
        self.skipped += 1
        line = f"{where}: {reason}"
        if len(self.reasons) < FIRST_REASONS_SHOWN:
            self.reasons.append(line)
        log.warning("skipped sample %s", line)

    @property
    def skipped_fraction(self) -> float:
        return self.skipped / self.seen if self.seen else 0.0

    def check(self, what: str = "data") -> None:
        """Raise DataError when too much was skipped or nothing is left."""
        if self.seen and self.skipped == self.seen:
            raise DataError(
                f"{what}: all {self.seen} samples were skipped; first reasons:\n" + self._listing()
            )
        if self.skipped_fraction > self.max_skipped_fraction:
            raise DataError(
                f"{what}: skipped {self.skipped} of {self.seen} samples "
                f"({self.skipped_fraction:.1%} > max_skipped_fraction "
                f"{self.max_skipped_fraction:.1%}); first reasons:\n" + self._listing()
            )

    def _listing(self) -> str:
        return "\n".join(f"  - {reason}" for reason in self.reasons)
