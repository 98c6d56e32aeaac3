"""Greedy evaluation with the rollout pool: one response per sample at temperature 0, scored
by vidrl.evaluation.scoring.

Used three ways, by the same code: inside a training run (`evaluate_run`, with the weights the
rollout workers hold now), by `vidrl eval` and by the demo (vidrl.cluster.eval_job, on any
Hugging Face checkpoint). Each video is decoded once per evaluation, whatever the number of
prompt variants (with and without thinking); its frames go to the object store once.

Bad input never stops an evaluation: a video that cannot be decoded, and a prompt the engine
cannot fit, are skipped and counted; an output that cannot be parsed scores 0 and is counted.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vidrl.cluster.build import Run
from vidrl.cluster.inputs import LearnerInputs, StepInputs
from vidrl.data.prompts import PromptConfig
from vidrl.data.sample import Sample
from vidrl.data.skips import SkipLog
from vidrl.evaluation.scoring import Scored, flat_metrics, prediction_row, score_prediction, summarize
from vidrl.rewards.config import RewardsConfig, build_reward
from vidrl.rewards.types import RewardInput
from vidrl.rollout.config import RolloutConfig
from vidrl.rollout.prompts import build_rollout_prompt
from vidrl.rollout.types import Sampling


def variant_name(think: bool) -> str:
    """The name a prompt variant is reported under: "think" or "no_think"."""
    return "think" if think else "no_think"


@dataclass(frozen=True)
class EvalResult:
    """One prompt variant's evaluation: every answered sample, scored, and what was skipped.

    skipped_videos:  samples whose video could not be decoded.
    skipped_prompts: samples whose prompt the engine could not fit (rollout.on_too_long).
    skip_reasons:    the first reasons, one line each.
    seconds:         wall time of this variant's generation and scoring.
    """

    variant: str
    parse: str
    scored: tuple[Scored, ...]
    skipped_videos: int
    skipped_prompts: int
    skip_reasons: tuple[str, ...]
    seconds: float

    @property
    def tasks(self) -> dict[str, dict[str, Any]]:
        """Task -> metrics (percent), as `vidrl.evaluation.scoring.summarize` gives them."""
        return summarize(self.scored, self.parse)

    def summary(self) -> dict[str, Any]:
        """The task metrics plus counts: what summary.json holds per variant."""
        return {
            **self.tasks,
            "samples": len(self.scored),
            "skipped": self.skipped_videos + self.skipped_prompts,
            "skipped_videos": self.skipped_videos,
            "skipped_prompts": self.skipped_prompts,
            "skip_reasons": list(self.skip_reasons),
            "seconds": round(self.seconds, 2),
        }

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        """Flat `{prefix}/{task}/{metric}` -> value (e.g. `eval/tvg/mIoU`) for a metrics sink."""
        skipped = float(self.skipped_videos + self.skipped_prompts)
        return flat_metrics(self.tasks, prefix) | {f"{prefix}/skipped": skipped}

    def rows(self) -> list[dict[str, Any]]:
        """One predictions row per answered sample (readable by `vidrl metrics`)."""
        return [prediction_row(s, variant=self.variant) for s in self.scored]


def greedy_sampling(cfg: RolloutConfig) -> Sampling:
    """One response per prompt at temperature 0, with the run's response budget and stops."""
    return Sampling(
        samples_per_prompt=1,
        temperature=0.0,
        top_p=1.0,
        max_response_tokens=cfg.max_response_tokens,
        stop_strings=cfg.stop_strings,
    )


def decode_eval_set(inputs: LearnerInputs, samples: Sequence[Sample], skips: SkipLog) -> StepInputs:
    """Each distinct video decoded once and put in the object store; undecodable ones skipped
    and counted in `skips`."""
    import ray

    return inputs.step_inputs(samples, skips, put=ray.put)


def evaluate_variants(
    rollout: Any,
    inputs: LearnerInputs,
    decoded: StepInputs,
    prompts: Mapping[str, PromptConfig],
    sampling: Sampling,
    parse: str = "tags",
    skips: SkipLog | None = None,
) -> dict[str, EvalResult]:
    """Generate with `rollout` (a RolloutPool) for every prompt variant over the decoded set,
    and score; `skips` holds the videos that were skipped while decoding."""
    skips = skips or SkipLog(max_skipped_fraction=1.0)
    results: dict[str, EvalResult] = {}
    for name, prompt_cfg in prompts.items():
        started = time.perf_counter()
        # The clips are already in the object store: each prompt carries the same reference.
        batch_prompts = [
            build_rollout_prompt(sample, clip, prompt_cfg, inputs.processor, prompt.clip)
            for sample, clip, prompt in zip(decoded.samples, decoded.clips, decoded.prompts, strict=True)
        ]
        batch = rollout.generate(batch_prompts, step=0, sampling=sampling)
        scored = tuple(
            score_prediction(decoded.samples[g.prompt_index], g.responses[0].text, parse)
            for g in batch.groups
        )
        reasons = [*skips.reasons, *(f"{s.sample_id}: {s.reason}" for s in batch.skipped)]
        seconds = time.perf_counter() - started
        results[name] = EvalResult(
            name, parse, scored, skips.skipped, len(batch.skipped), tuple(reasons[:10]), seconds
        )
    return results


def evaluate_run(run: Run, samples: Sequence[Sample], parse: str = "tags") -> EvalResult:
    """Greedy answers of the run's current weights (the run's own prompt variant), scored.

    For evaluation every K steps inside training: log `result.metrics()` with the step's
    metrics (keys such as `eval/tvg/mIoU`, `eval/mcq/accuracy`, `eval/skipped`)."""
    skips = SkipLog(max_skipped_fraction=1.0)
    decoded = decode_eval_set(run.inputs, samples, skips)
    name = variant_name(run.cfg.prompt.think)
    results = evaluate_variants(
        run.rollout,
        run.inputs,
        decoded,
        {name: run.cfg.prompt},
        greedy_sampling(run.cfg.rollout),
        parse,
        skips,
    )
    return results[name]


def mean_reward(cfg: RewardsConfig, scored: Sequence[Scored]) -> float:
    """Mean total reward of the scored predictions under `cfg` (samples it cannot score are
    left out; 0.0 when none is scored)."""
    reward = build_reward(cfg)
    scores = reward([RewardInput(sample=s.sample, response=s.prediction) for s in scored])
    totals = [s.total for s in scores if s is not None]
    return sum(totals) / len(totals) if totals else 0.0


def evaluate(run: Run, samples: Sequence[Sample]) -> dict[str, Any]:
    """Before and after training: `evaluate_run(run, samples).summary()` (task -> metrics, plus
    `skipped` and counts) with `reward`, the mean total reward of the greedy answers under the
    run's own rewards."""
    result = evaluate_run(run, samples)
    return result.summary() | {"reward": mean_reward(run.cfg.rewards, result.scored)}
