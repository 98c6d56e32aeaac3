"""Rollout prompts and frame arithmetic: halving, the too-long policy, metadata, estimates."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from vidrl.data.prompts import PromptConfig
from vidrl.data.sample import Sample
from vidrl.data.video import Clip
from vidrl.rollout.prompts import (
    PromptTooLong,
    build_rollout_prompt,
    estimate_prompt_tokens,
    estimate_visual_tokens,
    fit_prompt,
    halve_positions,
    select_frames,
    video_metadata,
)
from vidrl.rollout.types import RolloutPrompt


def clip(num_frames: int = 4, height: int = 56, width: int = 84) -> Clip:
    """Frame i is filled with the value i; every 4th frame of an 8 fps video."""
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    frames += np.arange(num_frames, dtype=np.uint8)[:, None, None, None]
    indices = np.arange(num_frames, dtype=np.int64) * 4
    return Clip(frames, indices / 8.0, indices, 8.0, num_frames * 4 / 8.0, "v.mp4")


@pytest.mark.parametrize(
    ("count", "kept"),
    [
        (8, [1, 3, 5, 7]),  # 4 segments of 2: centres 1, 3, 5, 7
        (6, [1, 4]),  # 6 // 2 = 3, down to even 2; segments of 3: centres 1.5, 4.5
        (10, [1, 3, 6, 8]),  # 5 -> 4; segments of 2.5: centres 1.25, 3.75, 6.25, 8.75
        (4, [1, 3]),
        (2, [0, 1]),  # never below one frame pair
    ],
)
def test_halving_keeps_an_even_count_spread_over_the_clip(count: int, kept: list[int]) -> None:
    assert halve_positions(np.arange(count)).tolist() == kept


def test_halving_twice_picks_from_the_kept_positions() -> None:
    # [1, 3, 5, 7] -> 2 segments of 2 positions: its entries 1 and 3, i.e. frames 3 and 7.
    assert halve_positions(halve_positions(np.arange(8))).tolist() == [3, 7]


def submitter(fits_at: int) -> tuple[list[int], Any]:
    """A submit callable that refuses more than `fits_at` frames, and its attempt log."""
    attempts: list[int] = []

    def submit(positions: np.ndarray) -> str:
        attempts.append(positions.size)
        if positions.size > fits_at:
            raise PromptTooLong(f"{positions.size} frames")
        return "request-1"

    return attempts, submit


def test_reduce_frames_halves_until_the_prompt_fits() -> None:
    attempts, submit = submitter(fits_at=4)
    outcome = fit_prompt(16, submit, "reduce_frames")
    assert attempts == [16, 8, 4]
    assert isinstance(outcome, tuple)
    request, kept = outcome
    # 16 -> 8 keeps 1, 3, ..., 15; 8 -> 4 keeps its entries 1, 3, 5, 7: frames 3, 7, 11, 15.
    assert request == "request-1" and kept.tolist() == [3, 7, 11, 15]


def test_reduce_frames_gives_up_at_one_frame_pair() -> None:
    attempts, submit = submitter(fits_at=1)
    assert fit_prompt(16, submit, "reduce_frames") == "too long with 2 of 16 frames: 2 frames"
    assert attempts == [16, 8, 4, 2]


def test_skip_policy_tries_once() -> None:
    attempts, submit = submitter(fits_at=4)
    assert fit_prompt(16, submit, "skip") == "too long with 16 of 16 frames: 16 frames"
    assert attempts == [16]


def test_text_only_prompt_that_fits_and_one_that_does_not() -> None:
    attempts, submit = submitter(fits_at=0)
    outcome = fit_prompt(0, submit, "reduce_frames")
    assert isinstance(outcome, tuple) and outcome[1].size == 0
    attempts, submit = submitter(fits_at=-1)
    assert fit_prompt(0, submit, "reduce_frames") == "too long with 0 of 0 frames: 0 frames"
    assert attempts == [0]


def test_other_errors_are_not_taken_for_length() -> None:
    def submit(positions: np.ndarray) -> str:
        raise ValueError("bad sampling parameter")

    with pytest.raises(ValueError, match="bad sampling parameter"):
        fit_prompt(8, submit, "reduce_frames")


def test_select_frames_keeps_frames_and_their_times() -> None:
    full = clip(num_frames=8)
    assert select_frames(full, np.arange(8)) is full
    part = select_frames(full, np.array([1, 5]))
    assert part.frames[:, 0, 0, 0].tolist() == [1, 5]
    assert part.frame_indices.tolist() == [4, 20] and part.timestamps.tolist() == [0.5, 2.5]
    assert (part.fps, part.duration, part.source) == (8.0, 4.0, "v.mp4")


def test_video_metadata_keeps_the_sampled_frame_rate() -> None:
    full = clip(num_frames=4)  # indices 0, 4, 8, 12 of an 8 fps, 2 s video
    meta = video_metadata(full)
    assert meta == {
        "fps": 8.0,
        "duration": 2.0,
        "total_num_frames": 16,  # 2 s x 8 fps
        "frames_indices": [0, 4, 8, 12],
    }
    # The processor's sampled fps: 4 of 16 frames x 8 fps = 2; with half the frames, 1.
    half = video_metadata(select_frames(full, np.array([1, 3])))
    assert len(half["frames_indices"]) / half["total_num_frames"] * half["fps"] == 1.0


def test_visual_token_estimate() -> None:
    # Qwen2.5-VL (28 px per merged patch), 16 frames of 224 x 168: 8 pairs x 8 x 6 = 384.
    assert estimate_visual_tokens((16, 224, 168), 28) == 384
    # An odd count is padded to whole pairs: 3 frames -> 2 pairs x 2 x 3 = 12.
    assert estimate_visual_tokens((3, 56, 84), 28) == 12
    assert estimate_visual_tokens((0, 0, 0), 28) == 0


def test_prompt_estimate_adds_text_to_visual_tokens() -> None:
    # 40 characters / 4 = 10 text tokens, plus 4 frames of 56 x 84: 2 x 2 x 3 = 12.
    with_clip = RolloutPrompt("a", "x" * 40, clip(num_frames=4))
    assert estimate_prompt_tokens(with_clip, 28) == 22
    by_shape = RolloutPrompt("a", "x" * 40, clip=None, video_shape=(4, 56, 84))
    assert estimate_prompt_tokens(by_shape, 28) == 22
    assert estimate_prompt_tokens(RolloutPrompt("b", "x" * 40), 28) == 10


class Templater:
    """Records what it was asked to render."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def apply_chat_template(self, conversation: list[dict[str, Any]], **kwargs: Any) -> str:
        self.seen.append((conversation, kwargs))
        return "<rendered>"


def test_build_rollout_prompt_carries_the_clip_or_its_reference() -> None:
    sample = Sample("s1", "tvg", "v.mp4", "the door opens", 2.0, timestamps=((0.5, 1.0),))
    templater = Templater()
    frames = clip(num_frames=4)
    prompt = build_rollout_prompt(sample, frames, PromptConfig(), templater)
    assert (prompt.sample_id, prompt.text, prompt.clip) == ("s1", "<rendered>", frames)
    assert prompt.video_shape == (4, 56, 84)
    ((conversation, kwargs),) = templater.seen
    assert kwargs == {"tokenize": False, "add_generation_prompt": True}
    assert {"type": "video"} in conversation[1]["content"]
    by_ref = build_rollout_prompt(sample, frames, PromptConfig(), templater, clip_ref="ref")
    assert by_ref.clip == "ref" and by_ref.video_shape == (4, 56, 84)
