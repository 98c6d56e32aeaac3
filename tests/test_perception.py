"""Perception pretraining's pure parts: questions that agree with their scene, rendered clips
that match decoding, the answer-only loss against hand-worked numbers, the broken-video
transforms."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vidrl.cluster.pretrain import SEEING_VIDEO, answer_loss, one_frame_repeated, shuffled_in_time
from vidrl.data.perception import NO_MOVER, perception_questions, scene_clip
from vidrl.data.synth import ask, plan_scene, synthesize
from vidrl.data.video import decode_clip


class Echo:
    """A templater that returns the user's text: the questions' wording is what is checked."""

    def apply_chat_template(self, conversation: list, **_: object) -> str:
        return " | ".join(part["text"] for m in conversation for part in m["content"] if "text" in part)


def test_every_answer_is_what_the_scene_shows() -> None:
    seen_kinds: set[str] = set()
    for index in range(40):
        scene = plan_scene(3, index, 128, 96, 8, 8, 16, (16, 20))
        movers = [t for t in scene.tracks if t.behaviour == "move"]
        for q in perception_questions(scene, Echo(), np.random.default_rng(index)):
            seen_kinds.add(q.kind)
            if q.kind == "colour":
                shape = q.prompt.split("Name the colour of the ")[1].split(".")[0]
                (track,) = [t for t in scene.tracks if t.shape == shape]
                assert q.answer == track.colour and track.behaviour != "recolour"  # its colour never changes
            elif q.kind == "count":
                assert q.answer == str(len(scene.tracks))
            elif q.kind == "mover":
                assert q.answer == (movers[0].colour if movers else NO_MOVER)
            elif q.kind == "direction":
                going_down = movers[0].end_xy[1] > movers[0].start_xy[1]
                assert q.answer == ("down" if going_down else "up")
            else:
                assert q.answer in "ABCD" and len(q.answer) == 1
    assert seen_kinds == {"colour", "count", "mover", "direction", "mcq_colour", "mcq_mover"}


def test_multiple_choice_is_asked_in_other_words_than_the_evaluation() -> None:
    scene = plan_scene(3, 5, 128, 96, 8, 8, 16, (16, 20))
    evaluation = [q["question"] for q in ask(scene, np.random.default_rng(0)) if q["task"] == "mcq"]
    asked = [q.prompt for q in perception_questions(scene, Echo(), np.random.default_rng(0))]
    for question in evaluation:
        assert not any(question in prompt for prompt in asked)
    assert any("Which colour does the" in prompt for prompt in asked)


def test_a_rendered_clip_is_the_decoded_clip(tmp_path: Path) -> None:
    data = synthesize(tmp_path, num_videos=2, seed=4, test_fraction=0, shape_radius=(16, 20))
    for scene in data.scenes:
        rendered = scene_clip(scene, SEEING_VIDEO)
        decoded = decode_clip(data.root / "videos" / f"{scene.name}.mp4", SEEING_VIDEO)
        assert np.array_equal(rendered.frame_indices, decoded.frame_indices)
        assert rendered.frames.shape == decoded.frames.shape
        # H.264 at crf 18 on flat colours: a few levels of difference on average.
        diff = np.abs(rendered.frames.astype(int) - decoded.frames.astype(int))
        assert diff.mean() < 4.0


def test_answer_loss_weighs_each_question_once() -> None:
    """Two questions over a vocabulary of 2 with uniform logits except where set: question 0 has
    one answer token (log 2 = 0.693), question 1 has two tokens, one certain (logit gap 20 ->
    about 2e-9) and one uniform (0.693): its mean 0.3466. The mean over questions is 0.5199,
    not the token mean (0.693 + 0 + 0.693) / 3 = 0.462."""
    logits = torch.zeros(2, 4, 2)
    logits[1, 1] = torch.tensor([20.0, 0.0])
    labels = torch.tensor([[-100, -100, 1, -100], [-100, -100, 0, 1]])
    expected = (math.log(2) + (math.log(2) + math.log1p(math.exp(-20))) / 2) / 2
    assert answer_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_broken_videos_keep_their_frames_but_not_their_order_or_motion() -> None:
    scene = plan_scene(3, 1, 128, 96, 8, 8, 16, (16, 20))
    clip = scene_clip(scene, SEEING_VIDEO)
    shuffled = shuffled_in_time(clip)
    assert not np.array_equal(shuffled.frames, clip.frames)
    assert np.array_equal(shuffled_in_time(clip).frames, shuffled.frames)  # the same clip alike
    assert sorted(f.tobytes() for f in shuffled.frames) == sorted(f.tobytes() for f in clip.frames)
    assert np.array_equal(shuffled.timestamps, clip.timestamps)
    still = one_frame_repeated(clip)
    assert all(np.array_equal(frame, clip.frames[clip.num_frames // 2]) for frame in still.frames)


def test_token_targets_name_the_shape_under_each_visual_token() -> None:
    """One token per 28-pixel square of each frame pair, in the tower's order; the token under a
    shape's centre names its colour and shape, a token far from every shape names nothing."""
    from vidrl.data.perception import token_targets
    from vidrl.data.synth import COLOURS, SHAPES

    scene = plan_scene(3, 2, 128, 96, 8, 8, 16, (16, 20))
    clip = scene_clip(scene, SEEING_VIDEO)
    frames, height, width, _ = clip.frames.shape
    targets = token_targets(scene, clip, 28)
    columns = width // 28
    assert targets.shape == (frames // 2 * (height // 28) * columns, 3)
    per_patch = (height // 28) * columns
    for patch in range(frames // 2):
        seconds = clip.frame_indices[2 * patch] / scene.fps
        for track in scene.tracks:
            visible, (x, y), colour = track.state(seconds)
            still_there = track.state(clip.frame_indices[2 * patch + 1] / scene.fps)[0]
            if not (visible and still_there):
                continue
            row, column = int(y * height / scene.height) // 28, int(x * width / scene.width) // 28
            got = targets[patch * per_patch + row * columns + column]
            assert got[0] == 1 + list(COLOURS).index(colour)
            assert got[1] == 1 + SHAPES.index(track.shape)
    assert (targets[:, 0] == 0).any()  # background tokens exist at this size
