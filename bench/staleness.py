"""max_staleness 0 (synchronous) against 1 (the rollout of step t+1 overlaps the update of step t).

Run: `.venv/bin/python bench/staleness.py [--steps 8]` (CPU, a few minutes; nothing is downloaded).
The demo's configuration (examples/synthetic.yaml) on freshly synthesized data and the tiny model,
without the SFT warm start; both runs in one process, one after the other, same seeds. Reports the
mean step time over the steps after the first (which pays for warm-up) and the speedup.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from vidrl.cluster.config import load_run_config
from vidrl.cluster.job import train
from vidrl.data.synth import synthesize
from vidrl.data.tiny import build_tiny_model

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "synthetic.yaml"


def step_times(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["time/step"] for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = synthesize(root / "data", num_videos=16, seed=0)
        model = build_tiny_model(root / "model")
        means = {}
        for staleness in (0, 1):
            cfg = load_run_config(
                EXAMPLE,
                [
                    f"model_path={model}",
                    f"data.train_path={data.train_yaml}",
                    "data.eval_path=null",
                    f"output_dir={root / 'runs'}",
                    f"run_name=staleness{staleness}",
                    f"trainer.steps={args.steps}",
                    "trainer.sft_steps=0",
                    f"trainer.max_staleness={staleness}",
                    "trainer.progress_bar=false",
                    "trainer.tensorboard=false",
                    "trainer.checkpoint_every_steps=0",
                ],
            )
            train(cfg)
            means[staleness] = statistics.mean(step_times(cfg.run_dir)[1:])
    print("| max_staleness | mean step s (steps 2..N) | speedup |")
    print("|---:|---:|---:|")
    for staleness, mean in means.items():
        print(f"| {staleness} | {mean:.2f} | {means[0] / mean:.2f}x |")


if __name__ == "__main__":
    main()
