"""What the end-to-end run tests share: a short run's settings and reading its metrics back."""

from __future__ import annotations

import json
from pathlib import Path


def short_run(assets: dict[str, Path], run_name: str, steps: int) -> list[str]:
    """Overrides of examples/synthetic.yaml for a run of `steps` small steps (2 prompts x 2
    samples x 8 tokens, no warm start, no evaluation), a checkpoint after each."""
    return [
        f"model_path={assets['model']}",
        f"data.train_path={assets['train']}",
        "data.eval_path=null",
        f"output_dir={assets['runs']}",
        f"run_name={run_name}",
        f"trainer.steps={steps}",
        "trainer.sft_steps=0",
        "trainer.prompts_per_step=2",
        "rollout.samples_per_prompt=2",
        "rollout.max_response_tokens=8",
        "trainer.checkpoint_every_steps=1",
        "trainer.progress_bar=false",
    ]


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
