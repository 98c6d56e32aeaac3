"""Can the seeing model learn to ground from its frames? Held-out grounding against the blind best.

    .venv/bin/python bench/seeing_grounding.py [--steps 1500] [--lr 5e-4] [--out F.json]

The demo's SFT and GRPO models, started from the committed seeing model, answer one interval to
nearly every grounding question (`make demo` counts them): nothing in the seeing model's
pretraining asked *when* something happens, and 45 grounding questions of SFT teach only where
intervals usually lie. Qwen2.5-VL tells the language model a frame's time only through the
temporal index of its rotary position (seconds x `tokens_per_second`), so answering in seconds
means reading that index. This fine-tunes a copy of the committed model on pretraining's scenes
with grounding questions phrased unlike the evaluation's ("From when to when does the red circle
move?", answered `3.5 to 7.0` after `<answer>`) beside its open questions, 16 a step, AdamW with
warm-up and cosine decay to a tenth, and measures by greedy decoding on the held-out mp4s of
`vidrl tiny-model --pretrain`'s report: its 84 grounding questions asked in the evaluation's
prompt (mIoU, and how many different intervals it answered) and the same events asked in the
training phrasing. Beside them, what a model that gives one fixed interval can reach at most: the mIoU of the
best single interval for every question (searched on the 0.5 s grid, on the held-out answers
themselves).

`--fresh qwen3_vl` asks the other way: a fresh tiny model of that family (the seeing model's
shape) trained from scratch on the same stream with pretraining's vision probe beside the
answers (lr 1e-3, as `vidrl tiny-model --pretrain`). Qwen3-VL writes each temporal patch's time
as text (`<3.0 seconds>`) before its tokens, so an answer in seconds can be copied from the
prompt instead of read from a rotary index.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from fine_tune import fine_tune, fine_tune_parser, write_result

from vidrl.cluster.pretrain import (
    OPEN_SEED,
    OPEN_VIDEOS,
    PRETRAIN_SCENE_SEED,
    SEEING_MODEL,
    SEEING_SHAPE,
    SEEING_VIDEO,
    Batcher,
    PretrainConfig,
    VisionProbe,
    _scene,
    _test_samples,
    answer_loss,
    held_out_data,
    open_question_scores,
)
from vidrl.data.answers import parse_interval
from vidrl.data.perception import open_prompt, perception_questions, scene_clip, token_targets
from vidrl.data.prompts import PromptConfig, render_prompt
from vidrl.data.sample import Sample
from vidrl.data.synth import Scene, ShapeTrack
from vidrl.data.tiny import build_tiny_model
from vidrl.data.video import Clip, decode_clip
from vidrl.evaluation.metrics import blind_best, temporal_iou
from vidrl.models import family_named

PER_STEP = 16


def when_question(track: ShapeTrack) -> str:
    """The training phrasing of a grounding question (the evaluation states the event instead)."""
    if track.behaviour == "appear":
        return f"From when to when can you see the {track.colour} {track.shape}?"
    if track.behaviour == "move":
        return f"From when to when does the {track.colour} {track.shape} move?"
    return f"From when to when is the {track.shape} {track.alt_colour}?"


def when_answer(interval: tuple[float, float]) -> str:
    return f"{interval[0]:.1f} to {interval[1]:.1f}"


def events(scene: Scene) -> list[ShapeTrack]:
    return [t for t in scene.tracks if t.behaviour != "static"]


def items(batcher: Batcher, seed: int) -> Iterator[tuple[tuple[str, Clip, str], np.ndarray]]:
    """Endless ((prompt, clip, answer), the clip's probe targets) items, all the questions of each
    new scene in turn: its grounding questions, then its open ones (multiple choice left out: it
    is at chance)."""
    rng = np.random.default_rng([PRETRAIN_SCENE_SEED, seed, 11])
    templater, radius, index = batcher.inputs.processor, PretrainConfig().shape_radius, 0
    while True:
        scene = _scene(PRETRAIN_SCENE_SEED + seed + 2, index, radius)  # scenes stage 1 never drew
        index += 1
        clip = scene_clip(scene, batcher.inputs.video)
        targets = token_targets(scene, clip, batcher.inputs.video.pixel_multiple or 28)
        for track in events(scene):
            yield (open_prompt(when_question(track), templater), clip, when_answer(track.interval)), targets
        for question in perception_questions(scene, templater, rng):
            if not question.kind.startswith("mcq"):
                yield (question.prompt, clip, question.answer), targets


class TextTimeBatcher(Batcher):
    """The pretraining Batcher for a family that writes time as text (Qwen3-VL): its model reads
    which tokens are video from `mm_token_type_ids` (2 for video) and takes no
    `second_per_grid_ts`."""

    def encode(self, items: Any) -> Any:
        encoded = super().encode(items)
        inputs = encoded.model_inputs
        inputs.pop("second_per_grid_ts")
        video = self.inputs.tokenizer.convert_tokens_to_ids("<|video_pad|>")
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == video).long() * 2
        return encoded


def greedy_intervals(
    model: Any, batcher: Batcher, prompts: list[tuple[str, Clip]]
) -> list[tuple[float, float] | None]:
    """The interval each prompt is answered with after `<answer>`, greedy (None: none written)."""
    import torch

    found = []
    for prompt, clip in prompts:
        encoded = batcher.encode([(prompt, clip, None)])
        with torch.no_grad():
            out = model.generate(**encoded.model_inputs, max_new_tokens=16, do_sample=False)
        text = batcher.inputs.tokenizer.decode(out[0, encoded.model_inputs["input_ids"].shape[1] :])
        found.append(parse_interval(text.split("</answer>")[0], "any"))
    return found


def scored(answers: list[tuple[float, float] | None], truths: list[tuple[float, float]]) -> dict[str, Any]:
    ious = [temporal_iou(a, t) for a, t in zip(answers, truths, strict=True)]
    return {
        "mIoU": round(100 * float(np.mean(ious)), 1),
        "distinct": len({a for a in answers if a is not None}),
        "unparsed": sum(a is None for a in answers),
    }


def held_out_prompts(
    batcher: Batcher, samples: list[Sample], clips: dict[str, Clip], scenes: dict[str, Scene]
) -> dict[str, list[tuple[str, Clip]]]:
    """Each grounding question in the evaluation's prompt, and the same event in training's words."""
    templater = batcher.inputs.processor
    evaluation = [(render_prompt(s, PromptConfig(think=False), templater), clips[s.video]) for s in samples]
    trained = []
    for s in samples:
        # The event asked about: its interval, and its shape named in the statement.
        track = next(t for t in events(scenes[s.video]) if t.interval == s.interval and t.shape in s.question)
        trained.append((open_prompt(when_question(track), templater), clips[s.video]))
    return {"evaluation_prompt": evaluation, "training_phrasing": trained}


def main() -> None:
    import torch
    from transformers import AutoModelForImageTextToText

    from vidrl.cluster.pretrain import HELD_OUT_TEST_FRACTION, HELD_OUT_VIDEOS
    from vidrl.data.synth import _num_test

    parser = fine_tune_parser(__doc__.splitlines()[0])
    parser.add_argument("--fresh", default=None, help="a family: train a fresh tiny model of it instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = PretrainConfig()
    model_dir, video = SEEING_MODEL, SEEING_VIDEO
    if args.fresh:
        model_dir = Path(tempfile.mkdtemp(prefix=f"fresh-{args.fresh}-"))
        build_tiny_model(model_dir, seed=args.seed, shape=SEEING_SHAPE, family=args.fresh)
        # The same frames, resized to the family's merged patch (Qwen3-VL: 32 pixels, 4 x 3).
        factor = family_named(args.fresh).resize_factor
        video = SEEING_VIDEO.model_copy(
            update={"pixel_multiple": factor, "max_pixels_per_frame": factor**2 * 12}
        )
    batcher = TextTimeBatcher(model_dir, video) if args.fresh == "qwen3_vl" else Batcher(model_dir, video)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    probe = VisionProbe(model, SEEING_SHAPE.text_hidden_size) if args.fresh else None
    data = held_out_data(Path(tempfile.mkdtemp(prefix="seeing-grounding-")), cfg)
    samples = [s for s in _test_samples(data) if s.task == "tvg"]
    clips = {video: decode_clip(video, batcher.inputs.video) for video in {s.video for s in samples}}
    first = HELD_OUT_VIDEOS - _num_test(HELD_OUT_VIDEOS, HELD_OUT_TEST_FRACTION)
    planned = [_held_out_scene(i, cfg.shape_radius) for i in range(first, HELD_OUT_VIDEOS)]
    scenes = {video: next(p for p in planned if video.endswith(f"{p.name}.mp4")) for video in clips}
    prompts = held_out_prompts(batcher, samples, clips, scenes)
    truths = [s.interval for s in samples]
    blind, interval = blind_best(truths, max(s.duration for s in samples))
    blind = round(blind, 1)
    header = {"questions": len(samples), "blind_best_mIoU": blind, "blind_best": interval}
    print(json.dumps(header), flush=True)

    def measure(step: int) -> dict[str, Any]:
        row = {
            name: scored(greedy_intervals(model, batcher, asked), truths) for name, asked in prompts.items()
        }
        return row | {"open": open_question_scores(model, batcher, OPEN_VIDEOS, OPEN_SEED, cfg.shape_radius)}

    stream = items(batcher, args.seed)

    def step_loss() -> Any:
        batch = [next(stream) for _ in range(PER_STEP)]
        encoded = batcher.encode([item for item, _ in batch])
        loss = answer_loss(model(**encoded.model_inputs).logits, encoded.labels)
        if probe is None:
            return loss
        return loss + cfg.probe_weight * probe.loss(np.concatenate([targets for _, targets in batch]))

    head = list(probe.head.parameters()) if probe is not None else []  # trains with the model
    curve, seconds = fine_tune(model, args, step_loss, measure, extra_parameters=head)
    write_result(args, {**header, "curve": curve, "seconds": seconds})


def _held_out_scene(index: int, radius: tuple[int, int]) -> Scene:
    """Scene `index` of the held-out dataset (seed 0, as `held_out_data` draws it)."""
    from vidrl.data.synth import plan_scene

    return plan_scene(0, index, 128, 96, 8, 8, 16, radius)


if __name__ == "__main__":
    main()
