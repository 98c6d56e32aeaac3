"""The fine-tuning loop that the seeing-model experiments share (word_then_letter.py,
seeing_grounding.py): a copy of the committed seeing model trained on a stream of questions,
measured on held-out videos as it goes."""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

WARMUP_STEPS = 20


def fine_tune_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--every", type=int, default=250, help="measure every this many steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, default=None, help="the curve as JSON")
    return parser


def fine_tune(
    model: Any,
    args: argparse.Namespace,
    step_loss: Callable[[], Any],
    measure: Callable[[int], dict[str, Any]],
    extra_parameters: Sequence[Any] = (),
) -> tuple[list[dict[str, Any]], float]:
    """AdamW (no weight decay) with a linear warm-up over WARMUP_STEPS and cosine decay to a tenth
    of `args.lr`, gradients clipped to norm 1; `step_loss()` gives each step's loss. `measure`
    runs in eval mode before the first step and every `args.every` steps, its rows printed as
    JSON lines; `extra_parameters` (a probe's head) train beside the model's. The rows (each
    with the loss of the step before it) and the training seconds."""
    import torch

    def measured(step: int) -> dict[str, Any]:
        model.eval()
        row = {"step": step, **measure(step)}
        model.train()
        print(json.dumps(row), flush=True)
        return row

    curve, started = [measured(0)], time.perf_counter()
    optimizer = torch.optim.AdamW([*model.parameters(), *extra_parameters], lr=args.lr, weight_decay=0.0)
    model.train()
    for step in range(args.steps):
        warm = min(1.0, (step + 1) / WARMUP_STEPS)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * warm * (0.1 + 0.45 * (1 + math.cos(math.pi * step / args.steps)))
        loss = step_loss()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % args.every == 0:
            curve.append(measured(step + 1) | {"loss": round(loss.item(), 4)})
    return curve, round(time.perf_counter() - started, 1)


def write_result(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.out:
        args.out.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, **result},
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
