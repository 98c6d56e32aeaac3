"""`vidrl tiny-model --pretrain`: a tiny Qwen2.5-VL taught to read its frames, and the measure
of whether it does.

One process, the Hugging Face model, no Ray: pretraining is a plain supervised loop over
perception questions (vidrl.data.perception) on scenes drawn fresh for every step, rendered
directly at the frames and size a run samples, fed through the run's own processor path
(`LearnerInputs.vision`). The loss counts only the answer (the tokens after `<answer>`): the
format is trivially learned and would otherwise swamp the few tokens that need the frames.

The held-out measure reads real mp4 files of vidrl.data.synth's dataset (decoded by decord,
as a run decodes them) and asks its multiple-choice questions in the evaluation's own words;
the model's answer is the option letter it gives the highest probability after `<answer>`.
`frames` can break the video on purpose (shuffled in time, one frame repeated): a model that
reads its frames loses what those questions need, a blind one loses nothing.
"""

from __future__ import annotations

import json
import logging
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from vidrl.cluster.inputs import LearnerInputs
from vidrl.configbase import StrictConfig
from vidrl.data.perception import (
    NO_MOVER,
    PROBE_CLASSES,
    PerceptionQuestion,
    perception_questions,
    scene_clip,
    token_targets,
)
from vidrl.data.prompts import PromptConfig, render_prompt
from vidrl.data.sample import Sample
from vidrl.data.synth import COLOURS, Scene, plan_scene, synthesize
from vidrl.data.tiny import TinyQwenShape, build_tiny_model
from vidrl.data.video import Clip, VideoConfig, decode_clip

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SEEING_SHAPE = TinyQwenShape(
    text_hidden_size=128,
    text_layers=4,
    text_heads=4,
    text_kv_heads=2,
    text_intermediate_size=256,
    vision_depth=4,
    vision_hidden_size=128,
    vision_heads=4,
    vision_intermediate_size=256,
)
"""About 1.6M parameters: a 4-block vision tower (the default tiny model has 2 blocks 64 wide)."""
SEEING_VIDEO = VideoConfig(fps=2.0, max_frames=8, max_pixels_per_frame=12544, pixel_multiple=28)
"""The demo's sampling: 8 frames of at most 112 x 112 pixels (4 x 3 merged patches a frame)."""
SEEING_MODEL = Path(__file__).resolve().parents[1] / "assets" / "tiny_seeing_qwen2_5_vl"
"""The copy `vidrl tiny-model --pretrain` built, committed with its report (about 8 MB)."""
ANSWER_PREFIX = "<answer>"
REPORT = "perception_report.json"
PRETRAIN_SCENE_SEED = 1_000
"""Pretraining scenes are planned from seeds at and above this, held-out videos from the data's
own seed (0 in the demo): the two never share a scene."""


SEEING_RADIUS = (16, 20)
"""Shape radii in pixels of the seeing model's scenes: large enough to fill a merged 28-pixel patch
after resizing (the default synthetic data's 9-12 px shapes fill a quarter of one)."""


class PretrainConfig(StrictConfig):
    steps: int = Field(3000, ge=1)
    """Optimizer steps."""
    questions_per_step: int = Field(16, ge=1)
    """Questions in each step's batch (all the questions of one scene come together)."""
    lr: float = Field(1e-3, gt=0)
    """Peak AdamW learning rate (linear warm-up, cosine to a tenth)."""
    warmup_steps: int = Field(20, ge=0)
    shape_radius: tuple[int, int] = SEEING_RADIUS
    """Shape radii in pixels (see SEEING_RADIUS)."""
    seed: int = 0
    """Seeds the model's initial weights and the pretraining scenes."""
    probe_weight: float = Field(1.0, ge=0)
    """Weight of the vision probe's loss beside the answers' (VisionProbe; 0: answers only)."""


@dataclass(frozen=True)
class Encoded:
    """A padded batch for the Hugging Face forward, and the targets of its answer tokens."""

    model_inputs: dict[str, Any]
    labels: torch.Tensor  # int64 [B, N]; -100 outside the answer tokens


class Batcher:
    """Prompts + clips + target texts -> model inputs, through the run's processor path."""

    def __init__(self, model_dir: Path, video: VideoConfig = SEEING_VIDEO) -> None:
        self.inputs = LearnerInputs(str(model_dir), video, PromptConfig(think=False))
        tokenizer = self.inputs.tokenizer
        self.prefix = tokenizer(ANSWER_PREFIX, add_special_tokens=False)["input_ids"]
        self.pad = tokenizer.pad_token_id

    def ids(self, text: str) -> list[int]:
        return list(self.inputs.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, items: Sequence[tuple[str, Clip, str | None]]) -> Encoded:
        """Each item: (prompt text, clip, answer word or None). The sequence is the prompt, then
        `<answer>`, then (with an answer) `word</answer>` and the end of turn, which are labelled."""
        import torch

        rows, pixels, grids, seconds = [], [], [], []
        for text, clip, answer in items:
            prompt_ids, vision = self.inputs.vision(text, clip)
            target = [] if answer is None else [*self.ids(f"{answer}</answer>"), self.inputs.end_of_turn]
            rows.append(
                (np.concatenate([prompt_ids, self.prefix]).astype(np.int64), np.asarray(target, np.int64))
            )
            pixels.append(vision.pixel_values_videos)
            grids.append(vision.video_grid_thw)
            seconds.append(vision.second_per_grid_ts)
        width = max(len(p) + len(t) for p, t in rows)
        input_ids = torch.full((len(rows), width), self.pad, dtype=torch.int64)
        mask = torch.zeros((len(rows), width), dtype=torch.int64)
        labels = torch.full((len(rows), width), -100, dtype=torch.int64)
        for row, (prompt, target) in enumerate(rows):
            sequence = torch.from_numpy(np.concatenate([prompt, target]))
            input_ids[row, : len(sequence)] = sequence
            mask[row, : len(sequence)] = 1
            labels[row, len(prompt) : len(sequence)] = torch.from_numpy(target)
        model_inputs = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "pixel_values_videos": torch.from_numpy(np.concatenate(pixels)),
            "video_grid_thw": torch.from_numpy(np.concatenate(grids)),
            "second_per_grid_ts": torch.from_numpy(np.concatenate(seconds)),
        }
        return Encoded(model_inputs, labels)


class VisionProbe:
    """A linear head on the vision tower's merged output, trained beside the model and dropped
    after pretraining: the saved model is the plain architecture.

    Why: answers alone teach the tower too slowly. Measured on 2 cores (16 questions a step):
    with answer supervision only, 1,000 steps left counting, the mover and its direction at
    chance and the colour of a named shape at 0.47; with this probe's per-token targets
    (vidrl.data.perception.token_targets: colour, shape, moving) counting reached 0.97 at 250
    steps and the colour of a named shape 0.60 at 1,000."""

    def __init__(self, model: Any, width: int) -> None:
        import torch

        self.head = torch.nn.Linear(width, sum(PROBE_CLASSES))
        self.features: torch.Tensor | None = None
        self._hook = model.model.visual.register_forward_hook(self._keep)

    def _keep(self, _module: Any, _args: Any, output: Any) -> None:
        self.features = output.pooler_output  # [tokens of the batch, width], the model's order

    def loss(self, targets: np.ndarray) -> torch.Tensor:
        """Sum over the three targets of the mean cross-entropy over tokens; targets [tokens, 3]."""
        import torch
        import torch.nn.functional as F

        if self.features is None:
            raise RuntimeError("the probe has not seen a forward pass of the vision tower")
        logits = self.head(self.features)
        wanted = torch.from_numpy(targets)
        if len(wanted) != len(logits):
            raise ValueError(f"{len(wanted)} token targets for {len(logits)} visual tokens")
        parts = torch.split(logits, list(PROBE_CLASSES), dim=1)
        return sum(F.cross_entropy(part, wanted[:, i]) for i, part in enumerate(parts))

    def remove(self) -> None:
        self._hook.remove()


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over questions of each question's mean cross-entropy on its answer tokens.

    logits [B, N, V] at every position, labels [B, N] (-100 where nothing is predicted): the token
    at n is predicted from position n - 1. Every question weighs the same whatever its length."""
    import torch.nn.functional as F

    predicted, target = logits[:, :-1], labels[:, 1:]
    per_token = F.cross_entropy(predicted.transpose(1, 2), target, ignore_index=-100, reduction="none")
    counted = (target != -100).to(per_token.dtype)
    return ((per_token * counted).sum(1) / counted.sum(1).clamp(min=1)).mean()


HELD_OUT_VIDEOS = 80
HELD_OUT_TEST_FRACTION = 0.6
"""The held-out measure's dataset is the demo's (seed 0: 32 training videos, 48 held out) drawn
with the pretraining's shape sizes."""


def held_out_data(folder: Path, cfg: PretrainConfig, seed: int = 0) -> Path:
    """Synthesize the dataset whose test split measures the model; its folder."""
    return synthesize(
        folder,
        num_videos=HELD_OUT_VIDEOS,
        seed=seed,
        test_fraction=HELD_OUT_TEST_FRACTION,
        shape_radius=cfg.shape_radius,
    ).root


def pretrain_tiny_model(
    out_dir: Path, cfg: PretrainConfig, held_out: Path | None = None, shape: TinyQwenShape = SEEING_SHAPE
) -> dict[str, Any]:
    """Build the tiny model of `shape` into `out_dir`, pretrain it, save it there with its report.

    `held_out`: the synth dataset folder whose test split measures it (None: none measured)."""
    import torch
    from transformers import AutoModelForImageTextToText

    started = time.perf_counter()
    build_tiny_model(out_dir, seed=cfg.seed, shape=shape)
    batcher = Batcher(out_dir)
    model = AutoModelForImageTextToText.from_pretrained(out_dir, dtype=torch.float32)
    rng = np.random.default_rng([PRETRAIN_SCENE_SEED, cfg.seed])
    scenes = _scenes(cfg, batcher, rng)
    probe = VisionProbe(model, shape.text_hidden_size)
    optimizer = torch.optim.AdamW(
        [*model.parameters(), *probe.head.parameters()], lr=cfg.lr, weight_decay=0.0
    )
    model.train()
    losses, probe_losses = [], []
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * _schedule(step, cfg)
        items = [next(scenes) for _ in range(cfg.questions_per_step)]
        batch = batcher.encode([item for item, _ in items])
        loss = answer_loss(model(**batch.model_inputs).logits, batch.labels)
        seen = probe.loss(np.concatenate([targets for _, targets in items]))
        optimizer.zero_grad()
        (loss + cfg.probe_weight * seen).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        probe_losses.append(seen.item())
        if step % 100 == 0 or step == cfg.steps - 1:
            log.info(
                "pretrain step %d/%d: answer loss %.3f, probe loss %.3f",
                step + 1,
                cfg.steps,
                losses[-1],
                probe_losses[-1],
            )
    probe.remove()
    model.eval()
    model.save_pretrained(out_dir)
    report: dict[str, Any] = {
        "config": cfg.model_dump(mode="json"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(time.perf_counter() - started, 1),
        "answer_loss_first_last_100": [_mean(losses[:100]), _mean(losses[-100:])],
        "probe_loss_first_last_100": [_mean(probe_losses[:100]), _mean(probe_losses[-100:])],
    }
    report["open_questions"] = open_question_scores(model, batcher, OPEN_VIDEOS, OPEN_SEED, cfg.shape_radius)
    if held_out is not None:
        report["held_out"] = held_out_scores(model, batcher, held_out)
    (out_dir / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _scenes(cfg: PretrainConfig, batcher: Batcher, rng: np.random.Generator):
    """Endless ((prompt, clip, answer), the clip's token targets) items: all the questions of each
    new scene in turn."""
    index = 0
    cell = batcher.inputs.video.pixel_multiple or 28
    while True:
        scene = _scene(PRETRAIN_SCENE_SEED + cfg.seed, index, cfg.shape_radius)
        index += 1
        clip = scene_clip(scene, batcher.inputs.video)
        targets = token_targets(scene, clip, cell)
        for question in perception_questions(scene, batcher.inputs.processor, rng):
            yield (question.prompt, clip, question.answer), targets


def _scene(seed: int, index: int, radius: tuple[int, int]) -> Scene:
    """Scene `index` of `seed` at the synthetic dataset's default size: 128 x 96, 8 fps, 8-16 s."""
    return plan_scene(seed, index, 128, 96, 8, 8, 16, radius)


def _schedule(step: int, cfg: PretrainConfig) -> float:
    warm = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))


def _mean(values: Sequence[float]) -> float:
    return round(float(np.mean(values)), 4) if values else float("nan")


FrameTransform = Callable[[Clip], Clip]


def shuffled_in_time(clip: Clip) -> Clip:
    """The same frames in a random order (drawn from the clip's source name, so the same clip is
    always shuffled alike and different clips differently), timestamps kept: what a model sees
    when a decoder or a sampler scrambles the order. A fixed permutation would not do: one that
    keeps the halves apart (e.g. each half reversed) still tells a model early from late."""
    order = np.random.default_rng(zlib.crc32(clip.source.encode())).permutation(clip.num_frames)
    return replace(clip, frames=np.ascontiguousarray(clip.frames[order]))


def one_frame_repeated(clip: Clip) -> Clip:
    """The middle frame in every position: a video with no motion and no time."""
    middle = clip.frames[clip.num_frames // 2]
    return replace(clip, frames=np.ascontiguousarray(np.broadcast_to(middle, clip.frames.shape)))


def held_out_scores(
    model: Any, batcher: Batcher, data_root: Path, frames: FrameTransform | None = None
) -> dict[str, Any]:
    """Accuracy on the test split's multiple-choice questions (decoded mp4s, evaluation wording)
    by kind and overall, with the count of each and the blind level (one in four)."""
    samples = [s for s in _test_samples(data_root) if s.task == "mcq"]
    clips = {video: decode_clip(video, batcher.inputs.video) for video in {s.video for s in samples}}
    prompt_cfg = PromptConfig(think=False)
    correct: dict[str, list[bool]] = {}
    for start in range(0, len(samples), 16):
        chunk = samples[start : start + 16]
        items = [
            (
                render_prompt(sample, prompt_cfg, batcher.inputs.processor),
                _broken(clips[sample.video], frames),
            )
            for sample in chunk
        ]
        letters = [[chr(ord("A") + i) for i in range(len(sample.options))] for sample in chunk]
        for sample, letter in zip(chunk, _choices(model, batcher, items, letters), strict=True):
            kind = "mcq_colour" if sample.question.startswith("What colour") else "mcq_mover"
            correct.setdefault(kind, []).append(letter == sample.answer)
    everything = [ok for oks in correct.values() for ok in oks]
    return {
        "mcq": round(float(np.mean(everything)), 4),
        "questions": len(everything),
        **{kind: round(float(np.mean(oks)), 4) for kind, oks in sorted(correct.items())},
        "blind_level": 0.25,
    }


def _choices(
    model: Any, batcher: Batcher, items: Sequence[tuple[str, Clip]], words: Sequence[Sequence[str]]
) -> list[str]:
    """For each (prompt, clip), the one of its `words` whose first token the model finds most
    likely right after `<answer>`."""
    import torch

    batch = batcher.encode([(prompt, clip, None) for prompt, clip in items])
    with torch.no_grad():
        logits = model(**batch.model_inputs).logits
    last = batch.model_inputs["attention_mask"].sum(1) - 1
    chosen = []
    for row, candidates in enumerate(words):
        firsts = [batcher.ids(word)[0] for word in candidates]
        chosen.append(candidates[int(logits[row, last[row], firsts].argmax())])
    return chosen


def _test_samples(data_root: Path) -> list[Sample]:
    from vidrl.data.config import DataConfig
    from vidrl.data.readers import load_samples
    from vidrl.data.skips import SkipLog

    return load_samples(data_root / "test.yaml", DataConfig(), SkipLog())


OPEN_ANSWERS: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "count": ("2", "3"),
    "mover": (*COLOURS, NO_MOVER),
    "direction": ("up", "down"),
}
"""The words each open question is answered from (its blind level is one over their number,
or the most frequent answer's share)."""


def _open_questions(
    videos: int, seed: int, radius: tuple[int, int], templater: Any
) -> list[tuple[PerceptionQuestion, Scene]]:
    rng = np.random.default_rng([seed, 1])
    questions = []
    for index in range(videos):
        scene = _scene(seed, index, radius)
        for question in perception_questions(scene, templater, rng):
            if question.kind in OPEN_ANSWERS:
                questions.append((question, scene))
    return questions


def blind_levels(batcher: Batcher, videos: int, seed: int, radius: tuple[int, int]) -> dict[str, float]:
    """Per open question kind, the share of its most frequent answer on these scenes: the best a
    model that ignores the frames can score."""
    answers: dict[str, list[str]] = {}
    for question, _ in _open_questions(videos, seed, radius, batcher.inputs.processor):
        answers.setdefault(question.kind, []).append(question.answer)
    return {kind: max(got.count(a) for a in set(got)) / len(got) for kind, got in sorted(answers.items())}


OPEN_VIDEOS = 40
OPEN_SEED = 2_000
"""The open questions are measured on scenes of their own (neither pretraining's nor the demo's)."""


def open_question_scores(
    model: Any,
    batcher: Batcher,
    videos: int,
    seed: int,
    radius: tuple[int, int],
    frames: FrameTransform | None = None,
) -> dict[str, float]:
    """Accuracy of the open questions on `videos` scenes planned from `seed` (rendered, not
    encoded): the answer word whose first token the model finds most likely after `<answer>`."""
    questions = _open_questions(videos, seed, radius, batcher.inputs.processor)
    clips = {scene.index: _broken(scene_clip(scene, batcher.inputs.video), frames) for _, scene in questions}
    correct: dict[str, list[bool]] = {}
    for start in range(0, len(questions), 16):
        chunk = questions[start : start + 16]
        items = [(q.prompt, clips[scene.index]) for q, scene in chunk]
        words = [OPEN_ANSWERS[q.kind] for q, _ in chunk]
        for (question, _), chosen in zip(chunk, _choices(model, batcher, items, words), strict=True):
            correct.setdefault(question.kind, []).append(chosen == question.answer)
    return {kind: round(float(np.mean(oks)), 4) for kind, oks in sorted(correct.items())}


def _broken(clip: Clip, frames: FrameTransform | None) -> Clip:
    return frames(clip) if frames else clip
