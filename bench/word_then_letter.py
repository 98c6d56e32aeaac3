"""Does the seeing model pick the right option once it says the answer's words first? Video, held out.

    .venv/bin/python bench/word_then_letter.py [--steps 1500] [--lr 5e-4] [--out F.json]

The committed seeing model (vidrl/assets/tiny_seeing_qwen2_5_vl) answers open questions from its
frames but multiple choice at chance, and bench/option_lookup.py found the option lookup itself
to be the wall: finding the letter of an option whose words the model has only as an internal
state. Here the model writes those words first, then the letter:

    <think>red</think><answer>B</answer>          (What colour is the square? (A) blue (B) red ...)
    <think>green circle</think><answer>D</answer>  (Which shape moves? ... (D) the green circle)

so the letter is looked up from tokens in its own context, the case option_lookup's curriculum
learned. One arm: fine-tune a copy of the committed model on pretraining's scenes (its open
questions as before, its multiple-choice questions in this format with two, then two or three,
then two to four options), 16 questions a step, AdamW with linear warm-up and cosine decay to a
tenth. Measured every `--every` steps on the held-out mp4s of `vidrl tiny-model --pretrain`'s
report (the evaluation's own wording and four options), by greedy decoding: the letter inside
`<answer>`, and how often the words are the right option's. The open questions are measured as
the report measures them, to see what the fine-tuning costs.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from fine_tune import fine_tune, fine_tune_parser, write_result

from vidrl.cluster.pretrain import (
    OPEN_SEED,
    OPEN_VIDEOS,
    PRETRAIN_SCENE_SEED,
    SEEING_MODEL,
    Batcher,
    PretrainConfig,
    _scene,
    _test_samples,
    answer_loss,
    held_out_data,
    open_question_scores,
)
from vidrl.data.perception import _reordered, _reworded, evaluation_mcqs, perception_questions, scene_clip
from vidrl.data.prompts import PromptConfig, render_prompt
from vidrl.data.sample import Sample
from vidrl.data.video import Clip, decode_clip

THINK = "<think>"
ANSWER = "<answer>"
PER_STEP = 16


def words_of(sample: Sample) -> str:
    """The words of the right option without its article: `red`, `green circle`."""
    option = sample.options[ord(sample.answer or "A") - ord("A")]
    return option.removeprefix("the ")


def fewer_options(sample: Sample, count: int, rng: np.random.Generator) -> Sample:
    """`sample` with `count` of its options (the right one among them), in a fresh order."""
    right = ord(sample.answer or "A") - ord("A")
    others = [i for i in range(len(sample.options)) if i != right]
    kept = [right, *rng.permutation(others)[: count - 1].tolist()]
    return _reordered(replace(sample, options=tuple(sample.options[i] for i in kept), answer="A"), rng)


def options_at(step: int, steps: int) -> tuple[int, ...]:
    """How many options a question may have at `step` (option_lookup's curriculum)."""
    if step >= 2 * steps // 5:
        return (2, 3, 4)
    return (2,) if step < steps // 5 else (2, 3)


def items(batcher: Batcher, steps: int, seed: int) -> Iterator[tuple[str, Clip, str, str]]:
    """Endless (prompt, clip, prefix, target) items, all the questions of each new scene in turn:
    open questions after `<answer>`, multiple choice after `<think>` (words, then the letter)."""
    rng = np.random.default_rng([PRETRAIN_SCENE_SEED, seed, 7])
    templater, prompt_cfg = batcher.inputs.processor, PromptConfig(think=False)
    radius, index, served = PretrainConfig().shape_radius, 0, 0  # served: items so far
    while True:
        scene = _scene(PRETRAIN_SCENE_SEED + seed + 1, index, radius)  # scenes stage 1 never drew
        index += 1
        clip = scene_clip(scene, batcher.inputs.video)
        for question in perception_questions(scene, templater, rng):
            if not question.kind.startswith("mcq"):
                served += 1
                yield question.prompt, clip, ANSWER, question.answer
        for sample in evaluation_mcqs(scene, rng):
            sample = replace(sample, question=_reworded(sample.question))
            count = int(rng.choice(options_at(served // PER_STEP, steps)))
            sample = fewer_options(sample, min(count, len(sample.options)), rng)
            target = f"{words_of(sample)}</think><answer>{sample.answer}"
            served += 1
            yield render_prompt(sample, prompt_cfg, templater), clip, THINK, target


def by_prefix(model_dir: Path) -> dict[str, Batcher]:
    """A Batcher for each prefix its rows end the prompt with (`<answer>`, `<think>`)."""
    batchers = {}
    for prefix in (ANSWER, THINK):
        batchers[prefix] = Batcher(model_dir)
        batchers[prefix].prefix = batchers[prefix].ids(prefix)
    return batchers


def loss_of(model: Any, batchers: dict[str, Batcher], batch: list[tuple[str, Clip, str, str]]) -> Any:
    """The answer loss of each prefix's rows, weighted by their number."""
    total = 0.0
    for prefix, batcher in batchers.items():
        rows = [(prompt, clip, target) for prompt, clip, p, target in batch if p == prefix]
        if rows:
            encoded = batcher.encode(rows)
            total = total + answer_loss(model(**encoded.model_inputs).logits, encoded.labels) * len(rows)
    return total / len(batch)


def held_out(model: Any, batcher: Batcher, samples: list[Sample], clips: dict[str, Clip]) -> dict[str, float]:
    """Greedy answers to the held-out multiple-choice questions (`batcher` ends each prompt with
    `<think>`): letter accuracy, words accuracy."""
    import torch

    prompt_cfg = PromptConfig(think=False)
    letters, words = [], []
    for sample in samples:
        encoded = batcher.encode(
            [(render_prompt(sample, prompt_cfg, batcher.inputs.processor), clips[sample.video], None)]
        )
        with torch.no_grad():
            out = model.generate(**encoded.model_inputs, max_new_tokens=12, do_sample=False)
        text = batcher.inputs.tokenizer.decode(out[0, encoded.model_inputs["input_ids"].shape[1] :])
        letter = re.search(r"<answer>\s*([A-D])", text)
        letters.append(bool(letter) and letter.group(1) == sample.answer)
        words.append(text.split("</think>")[0].strip() == words_of(sample))
    return {"mcq": round(float(np.mean(letters)), 4), "words": round(float(np.mean(words)), 4)}


def main() -> None:
    import torch
    from transformers import AutoModelForImageTextToText

    args = fine_tune_parser(__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    batchers = by_prefix(SEEING_MODEL)
    batcher = batchers[ANSWER]
    model = AutoModelForImageTextToText.from_pretrained(SEEING_MODEL, dtype=torch.float32)
    data = held_out_data(Path(tempfile.mkdtemp(prefix="word-then-letter-")), PretrainConfig())
    samples = [s for s in _test_samples(data) if s.task == "mcq"]
    clips = {video: decode_clip(video, batcher.inputs.video) for video in {s.video for s in samples}}
    radius = PretrainConfig().shape_radius

    def measure(step: int) -> dict[str, Any]:
        row = held_out(model, batchers[THINK], samples, clips)
        return row | {"open": open_question_scores(model, batcher, OPEN_VIDEOS, OPEN_SEED, radius)}

    stream = items(batcher, args.steps, args.seed)
    curve, seconds = fine_tune(
        model, args, lambda: loss_of(model, batchers, [next(stream) for _ in range(PER_STEP)]), measure
    )
    write_result(args, {"questions": len(samples), "curve": curve, "seconds": seconds})


if __name__ == "__main__":
    main()
