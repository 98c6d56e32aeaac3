"""Rollout prompts from samples and clips, and the frame arithmetic around them.

Pure functions, no vLLM: the learner uses `video_metadata` and `select_frames` to rebuild the
exact video input the engine saw, and the pool uses `estimate_prompt_tokens` to spread
prompts. `fit_prompt` is the too-long policy: the engine hands it a `submit` callable that
raises `PromptTooLong`, so the policy is tested here without an engine.

Departure from the references: Temporal-R1 and VideoChat-R1 cut prompts at a maximum prompt
length, which can cut through the visual tokens ("features and tokens do not match"); here a
prompt never loses tokens, it loses whole frames (halved, an even count, spread over the clip)
or is skipped with a logged reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

import numpy as np

from vidrl.data.prompts import ChatTemplater, PromptConfig, render_prompt
from vidrl.data.sample import Sample
from vidrl.data.video import TEMPORAL_PATCH, Clip
from vidrl.rollout.types import ClipSource, RolloutPrompt

CHARS_PER_TEXT_TOKEN = 4
"""Rough characters per token of English text under Qwen's tokenizer (estimates only)."""

Submitted = TypeVar("Submitted")


class PromptTooLong(ValueError):
    """The engine refused a prompt: its text plus visual tokens do not fit the model length."""


def build_rollout_prompt(
    sample: Sample,
    clip: Clip,
    prompt_cfg: PromptConfig,
    templater: ChatTemplater,
    clip_ref: ClipSource = None,
) -> RolloutPrompt:
    """The prompt for `sample` over `clip`; pass `clip_ref` to ship a reference, not the frames."""
    return RolloutPrompt(
        sample_id=sample.id,
        text=render_prompt(sample, prompt_cfg, templater),
        clip=clip if clip_ref is None else clip_ref,
        video_shape=tuple(clip.frames.shape[:3]),  # type: ignore[arg-type]
    )


def video_metadata(clip: Clip) -> dict[str, Any]:
    """The video metadata the Hugging Face processor (and vLLM) need next to the frames.

    The processor derives the sampled frame rate as len(frames_indices) / total_num_frames *
    fps, and from it the time each visual token stands for (multimodal rotary positions), so
    a clip with dropped frames (`select_frames`) keeps its timing. Call the processor with
    `do_sample_frames=False`: the frames are already the sampled ones.
    """
    return {
        "fps": float(clip.fps),
        "duration": float(clip.duration),
        "total_num_frames": max(round(clip.duration * clip.fps), clip.num_frames),
        "frames_indices": [int(i) for i in clip.frame_indices],
    }


def select_frames(clip: Clip, positions: np.ndarray) -> Clip:
    """The clip restricted to the frames at `positions` (what `RolloutGroup.frame_positions`
    says the engine saw); the same clip when the positions are all of its frames."""
    if positions.size == clip.num_frames and np.array_equal(positions, np.arange(clip.num_frames)):
        return clip
    return Clip(
        frames=clip.frames[positions],
        timestamps=clip.timestamps[positions],
        frame_indices=clip.frame_indices[positions],
        fps=clip.fps,
        duration=clip.duration,
        source=clip.source,
    )


def halve_positions(positions: np.ndarray) -> np.ndarray:
    """Half of `positions` (rounded down to an even count, at least 2), spread evenly.

    The kept ones are the centres of equal segments, as in video sampling: 8 -> 4 keeps
    [1, 3, 5, 7]; 6 -> 2 keeps [1, 4].
    """
    count = len(positions)
    keep = max(TEMPORAL_PATCH, count // 2 // TEMPORAL_PATCH * TEMPORAL_PATCH)
    centres = (np.arange(keep, dtype=np.float64) + 0.5) * (count / keep)
    return positions[np.floor(centres).astype(np.int64)]


def fit_prompt(
    num_frames: int,
    submit: Callable[[np.ndarray], Submitted],
    on_too_long: Literal["reduce_frames", "skip"],
) -> tuple[Submitted, np.ndarray] | str:
    """Submit a prompt with all its frames, then fewer while it is too long.

    `submit(positions)` hands the engine the prompt with the frames at `positions` and
    raises PromptTooLong when it does not fit. Returns what `submit` returned and the
    positions used, or the reason for skipping the prompt.
    """
    positions = np.arange(num_frames, dtype=np.int64)
    while True:
        try:
            return submit(positions), positions
        except PromptTooLong as err:
            if on_too_long == "skip" or positions.size <= TEMPORAL_PATCH:
                return f"too long with {positions.size} of {num_frames} frames: {err}"
            positions = halve_positions(positions)


def estimate_visual_tokens(video_shape: tuple[int, int, int], merged_patch_pixels: int) -> int:
    """Visual tokens of a clip of `video_shape` (T, H, W) if the processor keeps its size: one
    per frame pair and `merged_patch_pixels` square (the family's resize factor: patch x merge)."""
    frames, height, width = video_shape
    pairs = -(-frames // TEMPORAL_PATCH)
    return pairs * (height // merged_patch_pixels) * (width // merged_patch_pixels)


def estimate_prompt_tokens(prompt: RolloutPrompt, merged_patch_pixels: int) -> int:
    """Text plus visual tokens of `prompt`, estimated without a tokenizer (for balancing)."""
    shape = prompt.video_shape
    if isinstance(prompt.clip, Clip):
        shape = prompt.clip.frames.shape[:3]
    return len(prompt.text) // CHARS_PER_TEXT_TOKEN + estimate_visual_tokens(shape, merged_patch_pixels)
