"""The one record every task's training sample is read into.

A `Sample` is the ground truth of one question about one video. It is immutable and
picklable, so it crosses Ray actor boundaries as it is. Times are in seconds from
the start of the video; boxes are normalised `[x0, y0, x1, y1]` in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

TaskKind = Literal["tvg", "mcq", "gqa", "track"]
"""tvg: temporal grounding (query -> [start, end] s); mcq: multiple-choice VideoQA (-> letter);
gqa: grounded VideoQA (-> letter + supporting intervals); track: one box per sampled frame."""

TASK_KINDS: tuple[str, ...] = get_args(TaskKind)

Interval = tuple[float, float]
Box = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class Sample:
    """Ground truth of one question about one video.

    timestamps: tvg -> exactly one interval; gqa -> the supporting intervals; else empty.
    answer:     mcq/gqa -> the correct option letter ("A".."Z"); else None.
    options:    mcq/gqa -> the option texts in letter order.
    boxes:      track -> [N, 4] normalised boxes, the object's box at N evenly spaced
                times of the video (the tracking reward compares them frame by frame).
    """

    id: str
    task: TaskKind
    video: str
    question: str
    duration: float
    options: tuple[str, ...] = ()
    answer: str | None = None
    timestamps: tuple[Interval, ...] = ()
    boxes: tuple[Box, ...] = ()
    dataset: str = ""

    @property
    def interval(self) -> Interval:
        """The single ground-truth interval of a tvg sample."""
        if not self.timestamps:
            raise ValueError(f"sample {self.id!r} ({self.task}) has no ground-truth interval")
        return self.timestamps[0]
