"""Evaluation data formats: ActivityNet-Captions annotations and MVBench-style mcq records,
read by format detection, with bad records skipped and counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vidrl.data.config import DataConfig
from vidrl.data.readers import load_samples
from vidrl.data.skips import SkipLog


def _no_videos() -> DataConfig:
    return DataConfig(check_videos=False, max_skipped_fraction=1.0)


def test_activitynet_captions_one_tvg_sample_per_sentence(tmp_path: Path) -> None:
    path = tmp_path / "val_1.json"
    annotations = {
        "v_abc": {"duration": 82.73, "timestamps": [[0.0, 10.5], [75.1, 83.2]], "sentences": ["A", " B "]},
        "v_bad": {"duration": 20.0, "timestamps": [[25.0, 30.0]], "sentences": ["after the end"]},
    }
    path.write_text(json.dumps(annotations))
    skips = SkipLog(1.0)
    samples = load_samples(path, _no_videos(), skips)
    assert [s.id for s in samples] == ["v_abc#0", "v_abc#1"]
    assert {s.task for s in samples} == {"tvg"} and {s.dataset for s in samples} == {"activitynet"}
    assert samples[0].video == str(tmp_path / "v_abc.mp4")  # folder + id + data.video_extension
    assert samples[1].question == "B"
    assert samples[1].interval == (75.1, 82.73)  # an end past the duration is clamped to it
    assert skips.skipped == 1 and "outside the video" in skips.reasons[0]  # a start past the end


def test_charades_keys_are_still_read_as_charades(tmp_path: Path) -> None:
    path = tmp_path / "charades.json"
    path.write_text(json.dumps({"3MSZA": {"duration": 30, "timestamps": [[1, 2]], "sentences": ["x"]}}))
    (sample,) = load_samples(path, _no_videos())
    assert sample.dataset == "charades"


def test_mvbench_records_letter_from_the_answer_text_and_type_from_the_stem(tmp_path: Path) -> None:
    path = tmp_path / "action_sequence.json"
    records = [
        {"video": "a.mp4", "question": "What first?", "candidates": ["sit", "stand", "run"], "answer": "run"},
        {"video": "b.mp4", "question": "Q", "candidates": ["x", "y"], "answer": " x ", "task_type": "ocr"},
        {"video": "c.mp4", "question": "Q", "candidates": ["x", "y"], "answer": "z"},  # no such option
        {"video": "d.mp4", "question": "Q", "candidates": [], "answer": "x"},  # no options
        {"video": "e.mp4", "question": "Q", "candidates": ["x", "x"], "answer": "x"},  # ambiguous
    ]
    path.write_text(json.dumps(records))
    skips = SkipLog(1.0)
    first, second = load_samples(path, _no_videos(), skips)
    assert (first.task, first.answer, first.options) == ("mcq", "C", ("sit", "stand", "run"))
    assert first.dataset == "action_sequence" and first.video == str(tmp_path / "a.mp4")
    assert (second.answer, second.dataset) == ("A", "ocr")  # a record's own task_type wins
    assert skips.skipped == 3
    assert "not exactly one of the candidates" in skips.reasons[0]


@pytest.mark.parametrize("duration", [None, 12.5])
def test_mvbench_duration_is_optional(tmp_path: Path, duration: float | None) -> None:
    path = tmp_path / "t.json"
    record = {"video": "a.mp4", "question": "Q", "candidates": ["x", "y"], "answer": "y"}
    path.write_text(json.dumps([record if duration is None else record | {"duration": duration}]))
    (sample,) = load_samples(path, _no_videos())
    assert sample.duration == (1.0 if duration is None else 12.5)  # 1.0: unknown, never read for mcq


def test_missing_videos_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    (tmp_path / "here.mp4").write_bytes(b"not empty")
    records = [
        {"video": v, "question": "Q", "candidates": ["x", "y"], "answer": "y"}
        for v in ("here.mp4", "gone.mp4")
    ]
    path.write_text(json.dumps(records))
    skips = SkipLog(1.0)
    (sample,) = load_samples(path, DataConfig(max_skipped_fraction=1.0), skips)
    assert sample.video.endswith("here.mp4")
    assert skips.skipped == 1 and "missing" in skips.reasons[0]
