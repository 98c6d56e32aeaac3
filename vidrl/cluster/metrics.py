"""Timers around each phase, the metrics sink (JSONL, TensorBoard, W&B) and the progress bar."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class PhaseTimer:
    """`with timer.phase("rollout"): ...` records seconds under "time/rollout"."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[f"time/{name}"] = self.seconds.get(f"time/{name}", 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


class MetricsSink:
    """One JSON line per step in run_dir/metrics.jsonl, plus TensorBoard and W&B when asked."""

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        run_name: str = "run",
        config: Mapping[str, Any] | None = None,
    ) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tb"))
        self._wandb = None
        if wandb_project:
            try:
                import wandb
            except ImportError:
                log.warning("wandb_project is set but wandb is not installed: not logging to W&B")
            else:
                self._wandb = wandb.init(project=wandb_project, name=run_name, config=dict(config or {}))

    def reopen(self) -> None:
        """Append to metrics.jsonl as it is now on disk (after it was replaced, e.g. trimmed)."""
        self._file.close()
        self._file = self.path.open("a", encoding="utf-8")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(key, float(value), step)
        if self._wandb is not None:
            self._wandb.log(dict(metrics), step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


class Progress:
    """A tqdm bar over the run's steps that starts where a resumed run left off."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=total, initial=initial, desc="grpo", unit="step", disable=not enabled, dynamic_ncols=True
        )

    def update(self, metrics: Mapping[str, float]) -> None:
        self._bar.set_postfix(
            reward=f"{metrics.get('reward/mean', float('nan')):.3f}",
            step_s=f"{metrics.get('time/step', float('nan')):.1f}",
        )
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()
