"""The samples the preset tests score against: one per task, with round numbers."""

from __future__ import annotations

from vidrl.data.sample import Sample

TVG = Sample(id="t", task="tvg", video="v", question="q", duration=30.0, timestamps=((10.0, 20.0),))
MCQ = Sample("m", "mcq", "v", "q", duration=9.0, options=("a", "b", "c"), answer="B")
GQA = Sample(
    id="g",
    task="gqa",
    video="v",
    question="q",
    duration=30.0,
    options=("a", "b"),
    answer="B",
    timestamps=((0.0, 10.0), (5.0, 15.0)),  # merged: (0, 15)
)
