"""Can the tiny model turn a word it knows into an option letter? Text alone, no video.

    .venv/bin/python bench/option_lookup.py [--steps 1500] [--lr 1e-3] [--out F.json]
        [--prompts short chat] [--arms four curriculum] [--model DIR | --wider]

The seeing model (vidrl/assets/tiny_seeing_qwen2_5_vl) answers open questions from its frames
but multiple choice at chance. This isolates the step between the two: "Which option says
green?" over the options as the evaluation writes them ("(A) red\\n(B) green\\n..."), answered by
the letter. Nothing needs the video; the word to find is in the question. Each arm fine-tunes
a fresh copy of the committed model (its text path only) on fresh questions, 32 a step, AdamW,
and measures accuracy on 200 fixed four-option questions every 100 steps:

  four         four options from the first step
  curriculum   two options for the first fifth of the steps, two or three to two fifths, then
               two to four: the one-comparison case first

Why it matters: an answer needs the letter of the option whose text matches, which a transformer
finds by binding each option's text to the letter two tokens before it, then matching. Trained
only on the whole task, the loss sits at ln 4; our reading (not measured): while neither step is
formed, neither gets a useful gradient, and two options make one comparison enough to start.

The prompts are the bare question and options ("short", 32 tokens) or the whole chat prompt with
the system turn and the instruction ("chat", 117 tokens); no video tokens in either.

`--wider` asks whether capacity alone breaks the wall: a fresh (untrained) tiny Qwen2.5-VL whose
language model is 256 wide with 6 layers of 8 heads (WIDER; the seeing model's is 128 wide, 4
layers of 4), same tokenizer. `--model` takes any other model folder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vidrl.cluster.pretrain import SEEING_MODEL, SEEING_SHAPE, Batcher
from vidrl.data.prompts import SYSTEM_DIRECT
from vidrl.data.synth import COLOURS
from vidrl.data.tiny import build_tiny_model

BATCH = 32
EVAL_QUESTIONS = 200
LETTERS = "ABCD"
WIDER = SEEING_SHAPE.model_copy(
    update={"text_hidden_size": 256, "text_layers": 6, "text_heads": 8, "text_intermediate_size": 512}
)


def question(rng: np.random.Generator, options: int, batcher: Batcher, chat: bool) -> tuple[list[int], str]:
    """Token ids of one lookup question ending where the letter comes, and that letter."""
    words = [str(c) for c in rng.permutation(list(COLOURS))[:options]]
    wanted = int(rng.integers(options))
    lines = "\n".join(f"({LETTERS[i]}) {word}" for i, word in enumerate(words))
    text = f"Which option says {words[wanted]}?\n{lines}\n"
    if not chat:
        return batcher.ids(text), LETTERS[wanted]
    instruction = f"{text}Answer with the option's letter, e.g. A."
    messages = [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_DIRECT}]},
        {"role": "user", "content": [{"type": "text", "text": instruction}]},
    ]
    templater = batcher.inputs.processor
    prompt = templater.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return batcher.ids(str(prompt)) + batcher.prefix, LETTERS[wanted]


def letter_logits(model: Any, batcher: Batcher, rows: list[tuple[list[int], str]]) -> Any:
    """[B, 4]: the model's logits of A-D where each row's letter comes (rows right-padded)."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), batcher.pad)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for row, (ids, _) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
    logits = model(input_ids=input_ids, attention_mask=mask).logits
    last = mask.sum(1) - 1
    letters = [batcher.ids(letter)[0] for letter in LETTERS]
    return logits[torch.arange(len(rows)), last][:, letters]


def options_at(step: int, steps: int, curriculum: bool) -> tuple[int, ...]:
    """How many options a question may have at `step`."""
    if not curriculum or step >= 2 * steps // 5:
        return (2, 3, 4) if curriculum else (4,)
    return (2,) if step < steps // 5 else (2, 3)


def run_arm(
    curriculum: bool, chat: bool, steps: int, lr: float, model_dir: Path = SEEING_MODEL
) -> list[tuple[int, float]]:
    """Accuracy on the fixed four-option questions before training and every 100 steps."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    batcher = Batcher(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    held = [question(np.random.default_rng([99, i]), 4, batcher, chat) for i in range(EVAL_QUESTIONS)]
    wanted = torch.tensor([LETTERS.index(letter) for _, letter in held])

    def accuracy() -> float:
        model.eval()
        with torch.no_grad():
            chosen = letter_logits(model, batcher, held).argmax(1)
        model.train()
        return round(float((chosen == wanted).float().mean()), 3)

    rng = np.random.default_rng(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    curve = [(0, accuracy())]
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 20)
        counts = options_at(step, steps, curriculum)
        rows = [question(rng, int(rng.choice(counts)), batcher, chat) for _ in range(BATCH)]
        targets = torch.tensor([LETTERS.index(letter) for _, letter in rows])
        loss = F.cross_entropy(letter_logits(model, batcher, rows), targets)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % 100 == 0:
            curve.append((step + 1, accuracy()))
            print(f"curriculum={curriculum} chat={chat} step {step + 1}: {curve[-1][1]:.3f}", flush=True)
    return curve


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--prompts", nargs="+", choices=("short", "chat"), default=["short", "chat"])
    parser.add_argument("--arms", nargs="+", choices=("four", "curriculum"), default=["four", "curriculum"])
    parser.add_argument("--model", type=Path, default=SEEING_MODEL)
    parser.add_argument("--wider", action="store_true", help="a fresh model of shape WIDER instead")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.wider:
        args.model = build_tiny_model(Path(tempfile.mkdtemp(prefix="option-lookup-")), shape=WIDER)
    results: dict[str, Any] = {"steps": args.steps, "lr": args.lr, "model": str(args.model), "arms": {}}
    for prompt in args.prompts:
        for curriculum in (arm == "curriculum" for arm in args.arms):
            started = time.perf_counter()
            curve = run_arm(curriculum, prompt == "chat", args.steps, args.lr, args.model)
            name = f"{prompt}/{'curriculum' if curriculum else 'four'}"
            results["arms"][name] = {"curve": curve, "seconds": round(time.perf_counter() - started, 1)}
    print(f"{'arm':<20} {'start':>6} {'best':>6} {'last':>6}")
    for name, arm in results["arms"].items():
        accuracies = [a for _, a in arm["curve"]]
        print(f"{name:<20} {accuracies[0]:>6.3f} {max(accuracies):>6.3f} {accuracies[-1]:>6.3f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
