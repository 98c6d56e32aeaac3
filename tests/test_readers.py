"""Readers of every supported format; bad records are skipped, logged and counted."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest

from vidrl.data.config import DataConfig
from vidrl.data.readers import apply_strategy, load_samples, write_samples
from vidrl.data.records import check_sample
from vidrl.data.sample import Sample
from vidrl.data.skips import BadRecord, DataError, SkipLog


def fake_video(folder: Path, name: str) -> None:
    """Readers only check that a video file exists and is not empty; decoding is tested elsewhere."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"\x00" * 16)


def tr1(video: str, problem: str, solution: object, length: float = 10.0) -> dict[str, object]:
    return {
        "dataset": "synth",
        "video": video,
        "problem": problem,
        "solution": solution,
        "video_length": length,
    }


@pytest.fixture
def tr1_dir(tmp_path: Path) -> Path:
    for i in range(4):
        fake_video(tmp_path / "videos", f"v{i}.mp4")
    records = [
        tr1("v0.mp4", "the red circle appears", '<answer>{"start_time": "1.5", "end_time": "4.0"}</answer>'),
        tr1("v1.mp4", "the square moves", {"start_time": "2", "end_time": "3"}),
        tr1("v2.mp4", "What colour?\n(A) red\n(B) blue\n(C) green", "<answer>B</answer>"),
        tr1("v3.mp4", "the bad one", '{"start_time": "6", "end_time": "2"}'),  # reversed
    ]
    (tmp_path / "train.json").write_text(json.dumps(records))
    (tmp_path / "data.yaml").write_text(
        "datasets:\n  - json_path: train.json\n    data_folder: videos\n    sampling_strategy: all\n"
    )
    return tmp_path


def test_temporal_r1_data_config(tr1_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    skips = SkipLog(max_skipped_fraction=0.5)
    with caplog.at_level(logging.WARNING):
        samples = load_samples(tr1_dir / "data.yaml", DataConfig(), skips)
    assert [s.task for s in samples] == ["tvg", "tvg", "mcq"]
    assert samples[0].timestamps == ((1.5, 4.0),)
    assert samples[0].video == str(tr1_dir / "videos" / "v0.mp4")
    assert samples[2].options == ("red", "blue", "green") and samples[2].answer == "B"
    assert (skips.seen, skips.skipped) == (4, 1)
    # one log line naming the file, the record and the reason
    assert "train.json[3]" in caplog.text and "reversed" in caplog.text


def test_too_many_skips_stop_with_first_reasons(tr1_dir: Path) -> None:
    with pytest.raises(DataError) as err:
        load_samples(tr1_dir / "data.yaml", DataConfig(max_skipped_fraction=0.2))
    # 1 of 4 skipped = 25% > 20%
    assert "skipped 1 of 4 samples (25.0% > max_skipped_fraction 20.0%)" in str(err.value)
    assert "reversed" in str(err.value)


def test_missing_and_empty_videos_are_skipped(tr1_dir: Path) -> None:
    (tr1_dir / "videos" / "v0.mp4").unlink()
    (tr1_dir / "videos" / "v1.mp4").write_bytes(b"")
    skips = SkipLog(max_skipped_fraction=1.0)
    samples = load_samples(tr1_dir / "data.yaml", DataConfig(max_skipped_fraction=1.0), skips)
    assert [s.task for s in samples] == ["mcq"]
    assert (skips.seen, skips.skipped) == (4, 3)  # reversed + missing + empty
    assert any("video file is missing" in r for r in skips.reasons)
    assert any("empty (0 bytes)" in r for r in skips.reasons)


def test_charades_annotations(tmp_path: Path) -> None:
    fake_video(tmp_path / "v", "AAA.mp4")
    fake_video(tmp_path / "v", "BBB.mp4")
    ann = {
        "AAA": {
            "duration": 30.0,
            "timestamps": [[1, 5], [10, 12.5]],
            "sentences": ["a man sits.", "he stands"],
        },
        "BBB": {"duration": 8.0, "timestamps": [[2, 9]], "sentences": ["out of range"]},
    }
    (tmp_path / "charades.json").write_text(json.dumps(ann))
    skips = SkipLog(max_skipped_fraction=1.0)
    cfg = DataConfig(video_folder=str(tmp_path / "v"), max_skipped_fraction=1.0)
    samples = load_samples(tmp_path / "charades.json", cfg, skips)
    assert [(s.id, s.question, s.timestamps) for s in samples] == [
        ("AAA#0", "a man sits.", ((1.0, 5.0),)),
        ("AAA#1", "he stands", ((10.0, 12.5),)),
    ]
    assert skips.skipped == 1 and "outside the video [0, 8.0]" in skips.reasons[0]


def test_grounded_qa_records(tmp_path: Path) -> None:
    fake_video(tmp_path, "q.mp4")
    rec = {
        "video": "q.mp4",
        "question": "Why?",
        "options": ["x", "y", "z"],
        "answer": "(C)",
        "glue": [[1, 2], [4, 6]],
        "duration": 10,
    }
    (tmp_path / "gqa.json").write_text(json.dumps([rec, {**rec, "answer": "(F)"}]))
    skips = SkipLog(max_skipped_fraction=1.0)
    samples = load_samples(tmp_path / "gqa.json", DataConfig(max_skipped_fraction=1.0), skips)
    assert len(samples) == 1
    assert samples[0].task == "gqa" and samples[0].answer == "C"
    assert samples[0].timestamps == ((1.0, 2.0), (4.0, 6.0))
    assert skips.skipped == 1


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_own_samples_round_trip(tmp_path: Path, suffix: str) -> None:
    fake_video(tmp_path, "t.mp4")
    video = str(tmp_path / "t.mp4")
    samples = [
        Sample(id="a", task="tvg", video=video, question="q", duration=9.0, timestamps=((1.0, 2.0),)),
        Sample(
            id="b",
            task="track",
            video=video,
            question="follow the ball",
            duration=9.0,
            boxes=((0.1, 0.1, 0.5, 0.5), (0.2, 0.2, 0.6, 0.6)),
        ),
        Sample(id="c", task="mcq", video=video, question="q", duration=9.0, options=("x", "y"), answer="B"),
    ]
    path = write_samples(tmp_path / f"s{suffix}", samples)
    assert load_samples(path, DataConfig()) == samples


def test_bad_jsonl_lines_are_skipped_with_line_numbers(tmp_path: Path) -> None:
    fake_video(tmp_path, "t.mp4")
    good = {
        "id": "a",
        "task": "tvg",
        "video": str(tmp_path / "t.mp4"),
        "question": "q",
        "duration": 5,
        "timestamps": [[1, 2]],
    }
    lines = [json.dumps(good), "{not json", json.dumps({**good, "task": "dance"}), json.dumps(good)]
    (tmp_path / "s.jsonl").write_text("\n".join(lines))
    skips = SkipLog(max_skipped_fraction=1.0)
    samples = load_samples(tmp_path / "s.jsonl", DataConfig(max_skipped_fraction=1.0), skips)
    assert len(samples) == 2
    assert [r.split(": ", 1)[0].rsplit(":", 1)[1] for r in skips.reasons] == ["2", "3"]
    assert "unknown task 'dance'" in skips.reasons[1]


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("all", list(range(10))),
        ("first:3", [0, 1, 2]),
        ("end:2", [8, 9]),
        ("first:20%", [0, 1]),
        ("end:30%", [7, 8, 9]),
    ],
)
def test_sampling_strategies(strategy: str, expected: list[int]) -> None:
    items = [
        Sample(id=str(i), task="mcq", video="v", question="q", duration=1.0, answer="A") for i in range(10)
    ]
    kept = apply_strategy(items, strategy, random.Random(0), where="cfg")
    assert [int(s.id) for s in kept] == expected


def test_random_strategies_are_seeded_and_sized() -> None:
    items = [
        Sample(id=str(i), task="mcq", video="v", question="q", duration=1.0, answer="A") for i in range(10)
    ]
    a = apply_strategy(items, "random:4", random.Random("0:0"), where="cfg")
    b = apply_strategy(items, "random:4", random.Random("0:0"), where="cfg")
    assert a == b and len(a) == 4 and len({s.id for s in a}) == 4
    assert len(apply_strategy(items, "50%", random.Random(1), where="cfg")) == 5  # 50% of 10
    with pytest.raises(DataError, match="sampling_strategy 'some' is not one of"):
        apply_strategy(items, "some", random.Random(0), where="cfg")


@pytest.mark.parametrize(
    ("sample", "reason"),
    [
        (Sample(id="x", task="tvg", video="v", question="q", duration=0.0, timestamps=((0, 1),)), "duration"),
        (Sample(id="x", task="tvg", video="v", question="q", duration=5.0, timestamps=()), "exactly one"),
        (Sample(id="x", task="tvg", video="v", question="q", duration=5.0, timestamps=((-1, 1),)), "outside"),
        (
            Sample(id="x", task="mcq", video="v", question="q", duration=5.0, options=("a",), answer="B"),
            "only 1 options",
        ),
        (Sample(id="x", task="mcq", video="v", question="q", duration=5.0, answer="AB"), "one option letter"),
        (
            Sample(id="x", task="track", video="v", question="q", duration=5.0, boxes=((0.5, 0, 0.2, 1),)),
            "empty or reversed",
        ),
        (
            Sample(id="x", task="tvg", video="v", question=" ", duration=5.0, timestamps=((0, 1),)),
            "empty question",
        ),
    ],
)
def test_check_sample_rejects(sample: Sample, reason: str) -> None:
    with pytest.raises(BadRecord, match=reason):
        check_sample(sample)


def test_temporal_r1_list_solution_is_fractions_of_the_video(tmp_path: Path) -> None:
    fake_video(tmp_path, "v.mp4")
    # Temporal-R1's released data: [start, end] / video_length
    (tmp_path / "t.json").write_text(json.dumps([tr1("v.mp4", "a person opens a door", [0.25, 0.5], 20.0)]))
    (sample,) = load_samples(tmp_path / "t.json", DataConfig())
    assert sample.timestamps == ((5.0, 10.0),)  # 0.25 * 20, 0.5 * 20


def test_videos_outside_their_data_folder_are_skipped_with_the_reason(tmp_path: Path) -> None:
    """A record's video is joined to its data folder; an absolute path or `..` that leaves the
    folder is skipped (decoding is untrusted input), unless data.allow_paths_outside_folder."""
    fake_video(tmp_path / "videos", "ok.mp4")
    fake_video(tmp_path / "secret", "outside.mp4")
    records = [
        tr1("ok.mp4", "a", {"start_time": "1", "end_time": "2"}),
        tr1("../secret/outside.mp4", "b", {"start_time": "1", "end_time": "2"}),
        tr1(str(tmp_path / "secret" / "outside.mp4"), "c", {"start_time": "1", "end_time": "2"}),
    ]
    (tmp_path / "train.json").write_text(json.dumps(records))
    (tmp_path / "data.yaml").write_text("datasets:\n  - json_path: train.json\n    data_folder: videos\n")
    skips = SkipLog(max_skipped_fraction=1.0)
    confined = load_samples(tmp_path / "data.yaml", DataConfig(), skips)
    assert [s.question for s in confined] == ["a"] and skips.skipped == 2
    assert (
        "lies outside its data folder" in skips.reasons[0]
        and "allow_paths_outside_folder" in skips.reasons[0]
    )
    anywhere = load_samples(tmp_path / "data.yaml", DataConfig(allow_paths_outside_folder=True))
    assert [s.question for s in anywhere] == ["a", "b", "c"]
    # vidrl's own sample files are confined to data.video_folder when one is given.
    samples = write_samples(tmp_path / "own.jsonl", anywhere)
    assert len(load_samples(samples, DataConfig())) == 3
    inside = load_samples(samples, DataConfig(video_folder=str(tmp_path / "videos")), SkipLog(1.0))
    assert [s.question for s in inside] == ["a"]
