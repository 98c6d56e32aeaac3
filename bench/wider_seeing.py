"""Does a wider language model make the seeing model answer multiple choice? Stage 1 as built.

    .venv/bin/python bench/wider_seeing.py --out DIR [--steps 3000]

`vidrl tiny-model --pretrain` (vidrl.cluster.pretrain) with one change: the language model is
bench/option_lookup.py's WIDER (256 wide, 6 layers of 8 heads, instead of 128 wide with 4), the
shape that learned the option lookup on four options without a curriculum where the seeing
model's did not. Same vision tower, data, probe, schedule and report (perception_report.json in
DIR: open questions, and held-out multiple choice on the demo's mp4s in the evaluation's words).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from option_lookup import WIDER

import vidrl.cluster.pretrain as pretrain


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    cfg = pretrain.PretrainConfig(steps=args.steps)
    held_out = pretrain.held_out_data(args.out / "held_out_data", cfg)
    report = pretrain.pretrain_tiny_model(args.out, cfg, held_out, shape=WIDER)
    print(json.dumps({k: report[k] for k in ("parameters", "train_seconds", "open_questions", "held_out")}))


if __name__ == "__main__":
    main()
