"""The data stage of a step: samples -> decoded clips -> rollout prompts, and rollout groups ->
learner groups.

Each video is decoded once per step, in a Ray worker process (vidrl.cluster.decoding: a decoder
crash costs that video only); the frames go to the object store once and the rollout workers
read them from there (zero-copy). The learner needs the same frames as
processor output (pixel patches and grid): `LearnerInputs` runs the Hugging Face processor
once per prompt on exactly the frames the engine saw (`frame_positions`), with the engine's
own metadata and pixel bounds, and checks that it expands the prompt to the very token ids
the engine saw, so learner and rollout can never silently disagree on the visual tokens.
The family of the model (vidrl.models) says whether the processor's pixel bounds are per frame
(set once) or per clip (set for each clip, as the engine sets them with each request).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vidrl.cluster.decoding import decode_apart
from vidrl.data.prompts import PromptConfig, reference_response
from vidrl.data.sample import Sample
from vidrl.data.skips import SkipLog
from vidrl.data.video import Clip, VideoConfig, VideoError, decode_clip
from vidrl.learner.types import TrainGroup, VisionInputs
from vidrl.models import family_of
from vidrl.rollout.prompts import build_rollout_prompt, select_frames, video_metadata
from vidrl.rollout.types import RolloutGroup, RolloutPrompt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepInputs:
    """The prompts of one step, with what the later phases need to pair them up again.

    samples[i], clips[i] and prompts[i] belong together; samples whose video could not be
    decoded are not here (they were skipped and counted): `failed` holds their ids and reasons.
    """

    samples: tuple[Sample, ...]
    clips: tuple[Clip, ...]
    prompts: tuple[RolloutPrompt, ...]
    failed: tuple[tuple[str, str], ...] = ()


class LearnerInputs:
    """Builds RolloutPrompts and TrainGroups with the model's own processor.

    The frames are decoded at `video`'s pixel bounds, in multiples of the family's resize
    factor, and the processor is given the same bounds, so it keeps their size (the engine
    gets them too: RunConfig derives `rollout.*_pixels_per_frame` from `video`)."""

    def __init__(self, model_path: str, video: VideoConfig, prompt: PromptConfig) -> None:
        from transformers import AutoConfig, AutoProcessor

        self.family = family_of(AutoConfig.from_pretrained(model_path))
        self.video = video.for_family(self.family.name, self.family.resize_factor)
        self.min_pixels, self.max_pixels = video.min_pixels_per_frame, video.max_pixels_per_frame
        kwargs: dict[str, Any] = {}
        size = self.family.video_size(self.min_pixels, self.max_pixels, 1)
        if size is not None and not self.family.clip_pixel_budget:
            kwargs["size"] = size
        self.processor = AutoProcessor.from_pretrained(model_path, **kwargs)
        self.tokenizer = self.processor.tokenizer
        self.prompt = prompt
        self.end_of_turn = self.tokenizer.convert_tokens_to_ids(self.family.end_of_turn)

    def step_inputs(self, samples: Sequence[Sample], skips: SkipLog, put: Any = None) -> StepInputs:
        """Decode each distinct video once. With `put` (ray.put: a Ray run) the videos are
        decoded in Ray worker processes (vidrl.cluster.decoding) and each clip reaches the
        object store once; without, here."""
        decoded = self._decode([s.video for s in samples], put)
        kept: list[tuple[Sample, Clip, RolloutPrompt]] = []
        failed: list[tuple[str, str]] = []
        for sample in samples:
            result = decoded[sample.video]
            if isinstance(result, str):
                skips.skip(f"{sample.video} (sample {sample.id})", result, counted=True)
                failed.append((sample.id, f"video {sample.video}: {result}"))
                continue
            clip, ref = result
            kept.append((sample, clip, build_rollout_prompt(sample, clip, self.prompt, self.processor, ref)))
        columns = [tuple(column) for column in zip(*kept, strict=True)] if kept else [(), (), ()]
        return StepInputs(*columns, failed=tuple(failed))

    def _decode(self, videos: Sequence[str], put: Any) -> dict[str, tuple[Clip, Any] | str]:
        """video -> (clip, its reference or None), or why it could not be decoded."""
        if put is not None and self.video.decode_workers > 0:
            return decode_apart(videos, self.video)
        out: dict[str, tuple[Clip, Any] | str] = {}
        for video in dict.fromkeys(videos):
            try:
                clip = decode_clip(video, self.video)
            except VideoError as err:
                out[video] = err.reason
                continue
            out[video] = (clip, None if put is None else put(clip))
        return out

    def vision(self, text: str, clip: Clip) -> tuple[np.ndarray, VisionInputs]:
        """(prompt ids [P] with video pads expanded, processor output) for `clip` under `text`.

        The metadata (fps, frame indices) sets the seconds of each temporal patch: rotary time in
        Qwen2.5-VL, `<t seconds>` text in Qwen3-VL / Qwen3.5 (whose processors return no
        `second_per_grid_ts`: it is 1 there, and no position reads it)."""
        kwargs: dict[str, Any] = {}
        if self.family.clip_pixel_budget:
            size = self.family.video_size(self.min_pixels, self.max_pixels, clip.num_frames)
            kwargs = {} if size is None else {"size": size}
        out = self.processor(
            text=[text],
            videos=[clip.frames],
            video_metadata=[video_metadata(clip)],
            do_sample_frames=False,
            return_tensors="np",
            **kwargs,
        )
        grid = out["video_grid_thw"].astype(np.int64)
        vision = VisionInputs(
            pixel_values_videos=out["pixel_values_videos"].astype(np.float32),
            video_grid_thw=grid,
            second_per_grid_ts=np.asarray(
                out.get("second_per_grid_ts", np.ones(len(grid))), dtype=np.float64
            ),
        )
        return out["input_ids"][0].astype(np.int64), vision

    def train_group(
        self, group: RolloutGroup, prompt: RolloutPrompt, clip: Clip, advantages: np.ndarray
    ) -> TrainGroup:
        """The learner's view of a rollout group: same tokens, same frames, old log-probs."""
        ids, vision = self.vision(prompt.text, select_frames(clip, group.frame_positions))
        engine_ids = group.prompt_token_ids.astype(np.int64)
        if not np.array_equal(ids, engine_ids):
            raise ValueError(
                f"sample {group.sample_id}: the learner's processor gives {len(ids)} prompt tokens, "
                f"the rollout engine saw {len(engine_ids)}: their video settings differ"
            )
        return TrainGroup(
            prompt_ids=engine_ids,
            responses=tuple(r.token_ids.astype(np.int64) for r in group.responses),
            advantages=advantages.astype(np.float32),
            old_logprobs=tuple(r.logprobs.astype(np.float32) for r in group.responses),
            vision=vision,
            sample_id=group.sample_id,
        )

    def sft_group(self, sample: Sample, prompt: RolloutPrompt, clip: Clip) -> TrainGroup:
        """One reference response (the SFT target), ending with the end-of-turn token."""
        ids, vision = self.vision(prompt.text, clip)
        target = self.tokenizer(reference_response(sample, self.prompt), add_special_tokens=False)[
            "input_ids"
        ]
        return TrainGroup(
            prompt_ids=ids,
            responses=(np.asarray([*target, self.end_of_turn], dtype=np.int64),),
            advantages=np.ones(1, dtype=np.float32),
            vision=vision,
            sample_id=sample.id,
        )
