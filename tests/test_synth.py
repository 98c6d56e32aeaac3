"""vidrl.data.synth: determinism, the Temporal-R1 record layout, and answers that agree
with what the decoded frames show."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import av
import decord
import numpy as np
import pytest
import yaml

from vidrl.data.sample import Sample
from vidrl.data.synth import COLOURS, ShapeTrack, SynthResult, ask, plan_scene, render_frames, synthesize
from vidrl.data.video import VideoConfig, decode_clip


def qwen2_5_video(**fields: Any) -> VideoConfig:
    """A video config as a run resolves it for Qwen2.5-VL: frames in multiples of its patch 14 x
    merge 2 (a run takes the multiple from the model's family)."""
    return VideoConfig(pixel_multiple=28, **fields)


SMALL = {"num_videos": 6, "min_seconds": 4, "max_seconds": 6}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    return synthesize(tmp_path_factory.mktemp("synth_a"), seed=0, **SMALL)


def read_records(path: Path) -> list[dict[str, Any]]:
    records = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(records, list)
    return records


def all_frames(path: Path) -> np.ndarray:
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def test_same_seed_gives_identical_json_and_frames(
    synth: SynthResult, tmp_path_factory: pytest.TempPathFactory
) -> None:
    again = synthesize(tmp_path_factory.mktemp("synth_b"), seed=0, **SMALL)
    for name in ("train.json", "test.json", "train.yaml", "test.yaml"):
        assert (again.root / name).read_bytes() == (synth.root / name).read_bytes(), name
    for scene in synth.scenes:
        video = f"videos/{scene.name}.mp4"
        np.testing.assert_array_equal(all_frames(again.root / video), all_frames(synth.root / video))
    other = synthesize(tmp_path_factory.mktemp("synth_c"), seed=1, **SMALL)
    assert (other.root / "train.json").read_bytes() != (synth.root / "train.json").read_bytes()


def test_videos_are_small_h264_at_8_fps(synth: SynthResult) -> None:
    scene = synth.scenes[0]
    with av.open(str(synth.root / "videos" / f"{scene.name}.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height, stream.format.name) == (128, 96, "yuv420p")
        assert stream.average_rate == 8
        assert sum(1 for _ in container.decode(stream)) == scene.duration * 8


def test_split_is_by_video(synth: SynthResult) -> None:
    train = {r["video"] for r in read_records(synth.train_json)}
    test = {r["video"] for r in read_records(synth.test_json)}
    # 6 videos * 0.25 = 1.5, rounded to 2 test videos; 4 for training.
    assert (len(train), len(test)) == (4, 2)
    assert not train & test
    for name in ("train", "test"):
        assert yaml.safe_load((synth.root / f"{name}.yaml").read_text()) == {
            "datasets": [{"json_path": f"{name}.json", "data_folder": ".", "sampling_strategy": "all"}]
        }


ANSWER = re.compile(r"<answer>(.*)</answer>", re.DOTALL)


def test_records_follow_the_temporal_r1_layout(synth: SynthResult) -> None:
    records = read_records(synth.train_json) + read_records(synth.test_json)
    assert len({r["id"] for r in records}) == len(records)
    for record in records:
        assert record["dataset"] == "synth"
        assert (synth.root / record["video"]).is_file()
        assert not Path(record["video"]).is_absolute()
        length = record["video_length"]
        answer = ANSWER.fullmatch(record["solution"])
        assert answer is not None, record
        if record["task"] == "tvg":
            assert set(record) == {
                "id",
                "dataset",
                "task",
                "video",
                "problem",
                "solution",
                "video_length",
            }
            times = json.loads(answer.group(1))
            start, end = float(times["start_time"]), float(times["end_time"])
            # On the 0.5 s grid, at least 0.5 s away from both ends, at least 1.5 s long.
            assert start >= 0.5 and end <= length - 0.5 and end - start >= 1.5
            assert (start * 2).is_integer() and (end * 2).is_integer()
        else:
            assert record["task"] == "mcq"
            assert len(record["options"]) == 4 and len(set(record["options"])) == 4
            assert answer.group(1) in "ABCD"


def test_annotations_build_the_samples_the_records_describe(synth: SynthResult) -> None:
    for split, path in (("train", synth.train_json), ("test", synth.test_json)):
        samples = synth.samples(split)
        records = read_records(path)
        assert len(samples) == len(records)
        for sample, record in zip(samples, records, strict=True):
            assert isinstance(sample, Sample)
            assert sample.id == record["id"] and sample.question == record["problem"]
            assert sample.video == str(synth.root / record["video"])
            assert sample.duration == record["video_length"]
            if sample.task == "tvg":
                start, end = sample.interval
                assert record["solution"] == (
                    f'<answer>{{"start_time": "{start:.1f}", "end_time": "{end:.1f}"}}</answer>'
                )
            else:
                assert record["solution"] == f"<answer>{sample.answer}</answer>"
                assert list(sample.options) == record["options"]


def colour_pixels(frames: np.ndarray, colour: str) -> np.ndarray:
    """bool [T, H, W]: pixels within 45 levels (each channel) of the palette colour."""
    target = np.array(COLOURS[colour], dtype=int)
    return (np.abs(frames.astype(int) - target) < 45).all(axis=-1)


def check_track(track: ShapeTrack, frames: np.ndarray, times: np.ndarray) -> None:
    start, end = track.interval
    inside = (times >= start) & (times < end)
    counts = colour_pixels(frames, track.colour).sum(axis=(1, 2))
    # A radius-9 shape covers at least ~190 px at 128 x 96 (a triangle is 9 * 18 = 162 px).
    if track.behaviour == "appear":
        assert counts[inside].min() > 100 and counts[~inside].max() < 5
    elif track.behaviour == "recolour":
        alt = colour_pixels(frames, track.alt_colour or "").sum(axis=(1, 2))
        assert alt[inside].min() > 100 and alt[~inside].max() < 5
        assert counts[~inside].min() > 100 and counts[inside].max() < 5
    else:
        assert counts.min() > 100
    if track.behaviour == "move":
        ys = [np.argwhere(m)[:, 0].mean() for m in colour_pixels(frames, track.colour)]
        scale = frames.shape[1] / 96  # resized height over the video's 96 rows
        before, after = np.array(ys)[times < start], np.array(ys)[times >= end]
        assert np.abs(before - track.start_xy[1] * scale).max() < 2
        assert np.abs(after - track.end_xy[1] * scale).max() < 2


def test_answers_agree_with_the_decoded_frames(synth: SynthResult) -> None:
    questions = synth.annotations["train"] + synth.annotations["test"]
    for scene in synth.scenes:
        clip = decode_clip(synth.root / "videos" / f"{scene.name}.mp4", qwen2_5_video(fps=4.0))
        for track in scene.tracks:
            check_track(track, clip.frames, clip.timestamps)
        for question in (q for q in questions if q["id"].startswith(scene.name)):
            if question["task"] == "tvg":
                events = [t.interval for t in scene.tracks if t.behaviour != "static"]
                assert question["timestamps"][0] in events
                continue
            chosen = question["options"][ord(question["answer"]) - ord("A")]
            if question["question"] == "Which shape moves?":
                (mover,) = (t for t in scene.tracks if t.behaviour == "move")
                assert chosen == f"the {mover.colour} {mover.shape}"
            else:
                shape = question["question"].removeprefix("What colour is the ").rstrip("?")
                (track,) = (t for t in scene.tracks if t.shape == shape)
                assert chosen == track.colour and track.behaviour != "recolour"


def test_question_text_does_not_give_the_answer_away() -> None:
    # The default demo set's plan (no video encoding needed): 48 videos, seed 0.
    questions = [
        q
        for i in range(48)
        for q in ask(plan_scene(0, i, 128, 96, 8, 8, 16), np.random.default_rng([0, i, 1]))
    ]
    letters = Counter(q["answer"] for q in questions if q["task"] == "mcq")
    assert set(letters) == set("ABCD")
    assert max(letters.values()) < 0.4 * sum(letters.values())
    intervals_by_text: dict[str, set[tuple[float, float]]] = {}
    for q in questions:
        assert not re.search(r"\d", q["question"])  # no times or counts in the text
        if q["task"] == "tvg":
            intervals_by_text.setdefault(q["question"], set()).add(q["timestamps"][0])
        else:
            assert q["options"][ord(q["answer"]) - ord("A")] not in q["question"]
    repeated = [texts for texts in intervals_by_text.values() if len(texts) > 1]
    assert len(repeated) >= 5  # the same event text has different answers in different videos


def test_json_is_read_back_by_the_data_readers(synth: SynthResult) -> None:
    from vidrl.data import readers
    from vidrl.data.config import DataConfig

    for split in ("train", "test"):
        read = readers.load_samples(synth.root / f"{split}.json", DataConfig())
        assert tuple(read) == synth.samples(split)


def test_sampled_frames_are_the_same_frames_as_the_full_render() -> None:
    scene = plan_scene(0, 3, 128, 96, 8, 4, 6)
    every = list(render_frames(scene))
    picked = [5, 0, 17, 17]
    for index, frame in zip(picked, render_frames(scene, picked), strict=True):
        assert np.array_equal(frame, every[index])


def test_large_shapes_stay_inside_the_frame_and_movers_still_move() -> None:
    """Radius 16-20 on a 96-pixel-high frame leaves a mover less room than MIN_MOVE_PX from some
    starts: it then goes to the far edge, and no shape ever leaves the frame."""
    movers = 0
    for index in range(60):
        scene = plan_scene(1, index, 128, 96, 8, 8, 16, radius=(16, 20))
        for track in scene.tracks:
            assert 16 <= track.radius <= 20
            for _, y in (track.start_xy, track.end_xy):
                assert track.radius <= y <= 96 - track.radius
            if track.behaviour == "move":
                movers += 1
                assert abs(track.end_xy[1] - track.start_xy[1]) >= 10
    assert movers >= 10
