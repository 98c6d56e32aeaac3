"""`vidrl eval`: greedy evaluation of Hugging Face checkpoints with the rollout pool (no learner).

    OUT/                           (OUT/NAME/ for each of several models)
      summary.json                 {"models": ..., "variants": {variant: {task: metrics}}}
      predictions.jsonl            one row per answered sample (one variant), or
      predictions_<variant>.jsonl  one file per variant when several are evaluated

Rows hold the sample's id, task, dataset, question, the raw output (`prediction`), what was
parsed, the score, and the ground truth in the fields `vidrl metrics` reads, so `vidrl metrics
OUT/predictions.jsonl` reports the same numbers as summary.json.

Several checkpoints of one architecture (the demo's SFT warm start and final GRPO model) are
evaluated with ONE rollout pool: the first starts the engines, each next one is pushed into
them in place, as training pushes its weights. A local Ray cluster is started only when none
is running, and only that one is shut down.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vidrl.cluster.build import ray_session, serving
from vidrl.cluster.config import RunConfig
from vidrl.cluster.evaluate import (
    EvalResult,
    decode_eval_set,
    evaluate_variants,
    greedy_sampling,
    variant_name,
)
from vidrl.cluster.inputs import LearnerInputs
from vidrl.cluster.models import ModelRef, model_ref, serve, serving_config
from vidrl.data.prompts import PromptConfig
from vidrl.data.readers import load_samples
from vidrl.data.sample import Sample
from vidrl.data.skips import DataError, SkipLog

log = logging.getLogger(__name__)

VARIANTS: dict[str, bool] = {"think": True, "no_think": False}
"""Variant name -> whether the prompt asks for reasoning in <think> (the seed paper's two arms)."""


def variant_configs(cfg: RunConfig, variants: Sequence[str] | None) -> dict[str, RunConfig]:
    """The run config of each variant: prompt.think and rewards.think set together. None: the
    config's own variant only."""
    names = list(variants) if variants else [variant_name(cfg.prompt.think)]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; allowed: {', '.join(VARIANTS)}")
    out: dict[str, RunConfig] = {}
    for name in names:
        data = cfg.model_dump()
        data["prompt"]["think"] = data["rewards"]["think"] = VARIANTS[name]
        out[name] = RunConfig.model_validate(data)
    return out


def load_eval_set(cfg: RunConfig, data_path: str | None) -> tuple[list[Sample], SkipLog]:
    """Every usable sample of the evaluation data (data.eval_path unless given); records and
    videos that cannot be used are skipped and counted, never fatal, unless none is left."""
    path = data_path or cfg.data.eval_path
    if path is None:
        raise DataError("no evaluation data: give --data or set data.eval_path")
    skips = SkipLog(max_skipped_fraction=1.0)
    return load_samples(path, cfg.data, skips), skips


def evaluate_models(
    cfg: RunConfig,
    models: Mapping[str, str],
    samples: Sequence[Sample],
    variants: Sequence[str] | None = None,
    parse: str = "tags",
) -> dict[str, dict[str, EvalResult]]:
    """Model name -> variant -> result, for checkpoints that share one architecture and
    processor (the first model's base); each path a model folder or a LoRA adapter folder.
    Ray must be initialised (see `run_eval`)."""
    refs = {name: model_ref(path) for name, path in models.items()}
    first = next(iter(refs.values()))
    prompts: dict[str, PromptConfig] = {n: c.prompt for n, c in variant_configs(cfg, variants).items()}
    rollout = serving_config(cfg.rollout, list(refs.values()))
    inputs = LearnerInputs(first.base, cfg.video, cfg.prompt)
    skips = SkipLog(max_skipped_fraction=1.0)
    decoded = decode_eval_set(inputs, samples, skips)
    engines = ModelRef(first.base)
    results: dict[str, dict[str, EvalResult]] = {}
    with serving(cfg, rollout, first.base) as pool:
        for version, (name, ref) in enumerate(refs.items()):
            # The engines hold the previous model: this one's weights (or adapter) go in place.
            engines = serve(pool, ref, version, engines)
            results[name] = evaluate_variants(
                pool, inputs, decoded, prompts, greedy_sampling(rollout), parse, skips
            )
            log.info("evaluated %s (%s)", name, models[name])
    return results


def write_eval(out: Path, results: Mapping[str, EvalResult], header: Mapping[str, Any]) -> dict[str, Any]:
    """Write summary.json and the predictions file(s) of one model's results; the summary."""
    out.mkdir(parents=True, exist_ok=True)
    variants: dict[str, Any] = {}
    for name, result in results.items():
        file = "predictions.jsonl" if len(results) == 1 else f"predictions_{name}.jsonl"
        rows = "".join(json.dumps(row, allow_nan=False) + "\n" for row in result.rows())
        (out / file).write_text(rows, encoding="utf-8")
        variants[name] = {**result.summary(), "predictions": file}
    summary = {**header, "variants": variants}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def model_names(specs: Sequence[str]) -> dict[str, str]:
    """`--model` values, "PATH" or "NAME=PATH", as name -> path; a bare PATH is named by its
    folder. Names must be unique (they name the output folders)."""
    models: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name or spec, spec
        if name in models:
            raise ValueError(f"two models named {name!r}: name them, e.g. --model sft={path}")
        models[name] = path
    return models


def run_eval(
    cfg: RunConfig,
    models: Mapping[str, str],
    out: Path,
    data_path: str | None = None,
    variants: Sequence[str] | None = None,
    parse: str = "tags",
) -> dict[str, dict[str, Any]]:
    """`vidrl eval`: evaluate each checkpoint (name -> path) and write OUT (one model) or
    OUT/NAME (several); returns name -> summary."""
    samples, load_skips = load_eval_set(cfg, data_path)
    with ray_session(cfg):
        results = evaluate_models(cfg, models, samples, variants, parse)
    summaries = {}
    for name, by_variant in results.items():
        header = {
            "model": models[name],
            "data": data_path or cfg.data.eval_path,
            "parse": parse,
            "skipped_records": load_skips.skipped,
            "skipped_record_reasons": load_skips.reasons,
        }
        summaries[name] = write_eval(out if len(models) == 1 else out / name, by_variant, header)
    return summaries
