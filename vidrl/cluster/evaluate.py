"""Evaluation inside a run: greedy answers from the rollout pool, scored by vidrl.evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vidrl.cluster.build import Run
from vidrl.data.sample import Sample
from vidrl.data.skips import SkipLog
from vidrl.evaluation.harness import evaluate_predictions
from vidrl.rollout.types import Sampling


def evaluate(run: Run, samples: Sequence[Sample]) -> dict[str, Any]:
    """Greedy, one response per sample, with the weights the rollout workers hold now."""
    import ray

    skips = SkipLog(max_skipped_fraction=1.0)
    inputs = run.inputs.step_inputs(samples, skips, put=ray.put)
    greedy = Sampling(
        samples_per_prompt=1,
        temperature=0.0,
        top_p=1.0,
        max_response_tokens=run.cfg.rollout.max_response_tokens,
        stop_strings=run.cfg.rollout.stop_strings,
    )
    batch = run.rollout.generate(list(inputs.prompts), step=0, sampling=greedy)
    answered = [inputs.samples[g.prompt_index] for g in batch.groups]
    texts = [g.responses[0].text for g in batch.groups]
    result = evaluate_predictions(answered, texts)
    result["skipped"] = skips.skipped + len(batch.skipped)
    return result
