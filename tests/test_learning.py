"""GRPO learns, and `vidrl select` chooses, on the synthetic task from one SFT warm start:
for each of 3 seeds, GRPO raises the training reward visibly (the demo's `learning_check`: the
mean of the last 5 steps at least 0.1 above the first 5, no task's own score falling by more
than 0.1) and keeps what the warm start could do on held-out videos (greedy grounding mIoU
within a few points, no more unparsed answers); `vidrl select` on the warm start writes the
statistics table, the selected dataset and the summary, with a corrupt video in the data. The
whole stack: vLLM rollout worker, reward actor pool, 2-rank FSDP2 learner, weights pushed
through the object store; one Ray cluster for the module.

Why not a held-out gain: this tiny model does not read the video (multiple choice stays at
chance, 25%), so grounding can only learn the intervals' prior, and 80 SFT steps already put its
greedy answers there (30.7 mIoU on 63 held-out questions). GRPO then sharpens the sampled
policy (training IoU 0.15 -> 0.25) while greedy held-out mIoU moves by noise: measured -0.8 to
+4.7 over 3 seeds and 5 settings, one of which collapsed to 0 (a letter for every question,
before the format reward asked for the task's answer). The held-out bound catches that kind of
break; bench/claims.py reports the held-out numbers over seeds.

The settings are pinned here (`PINNED`), not read from the demo, so that the demo can change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]

EXAMPLE = Path(__file__).parents[1] / "examples" / "synthetic.yaml"
GRPO_STEPS = 40  # the demo's; with 30 one seed's reward rose by +0.102 only
MIOU_SLACK = 3.0  # points of held-out mIoU (percent) the policy may lose to noise
PINNED = (
    "trainer.sft_steps=80",
    "trainer.sft_lr=3e-3",
    "trainer.sft_prompts_per_step=16",
    "trainer.prompts_per_step=8",
    "trainer.max_staleness=0",
    "rollout.samples_per_prompt=8",
    "learner.loss.kl_coef=0.0",
)
"""The warm start and GRPO step this test's margins were measured with (the demo's before
issue 17), whatever examples/synthetic.yaml says now."""


@pytest.fixture(scope="module")
def sft(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import ray

    from vidrl.cluster.build import init_ray
    from vidrl.cluster.config import load_run_config
    from vidrl.cluster.job import warm_start
    from vidrl.data.synth import synthesize
    from vidrl.data.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("learning")
    # 32 videos to train on (107 questions, as the demo's before issue 17), 32 held out (113).
    data = synthesize(root / "data", num_videos=64, seed=0, test_fraction=0.5)
    base = [
        f"model_path={build_tiny_model(root / 'model', seed=0)}",
        f"data.train_path={data.train_yaml}",
        f"data.eval_path={data.test_yaml}",
        f"output_dir={root / 'runs'}",
        *PINNED,
        "trainer.eval_max_samples=1000",  # the whole held-out split
        "trainer.checkpoint_every_steps=0",
        "trainer.progress_bar=false",
        "trainer.tensorboard=false",
    ]
    cfg = load_run_config(EXAMPLE, [*base, "run_name=sft"])
    started = init_ray(cfg)
    yield {"base": base, "model": warm_start(cfg), "root": root, "train": data.train_yaml}
    if started:
        ray.shutdown()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grpo_learns_from_the_sft_warm_start(sft: Any, seed: int) -> None:
    from vidrl.cluster.config import load_run_config
    from vidrl.cluster.job import train
    from vidrl.cluster.plots import read_metrics
    from vidrl.demo import learning_check, training_curve

    base, sft_model = sft["base"], sft["model"]
    overrides = [
        *base,
        f"run_name=grpo{seed}",
        f"model_path={sft_model}",
        "trainer.sft_steps=0",
        f"trainer.steps={GRPO_STEPS}",
        f"seed={seed}",
        f"rollout.seed={seed}",
        "learner.lr=1e-3",
    ]
    cfg = load_run_config(EXAMPLE, overrides)
    summary = train(cfg)
    learned, why = learning_check(training_curve(read_metrics(cfg.run_dir)))
    assert learned, f"seed {seed}: {why}"
    before, after = summary["eval_before"]["tvg"], summary["eval_after"]["tvg"]
    assert after["mIoU"] >= before["mIoU"] - MIOU_SLACK, (
        f"seed {seed}: held-out mIoU {before['mIoU']:.1f} -> {after['mIoU']:.1f}"
    )
    assert after["unparsed"] <= before["unparsed"], f"seed {seed}: {after['unparsed']} unparsed answers"


def test_vidrl_select_on_the_warm_start(sft: Any) -> None:
    import json
    from types import SimpleNamespace

    import pyarrow.parquet as pq

    from vidrl.cli import main
    from vidrl.cluster.config import load_run_config
    from vidrl.data.readers import load_samples, write_samples
    from vidrl.data.sample import Sample

    root: Path = sft["root"]
    cfg = load_run_config(EXAMPLE, sft["base"])
    samples = load_samples(sft["train"], cfg.data)[:12]
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(b"\x00not an mp4")
    broken = Sample(
        id="broken", task="tvg", video=str(corrupt), question="q", duration=8.0, timestamps=((1, 2),)
    )
    data = write_samples(root / "select_input.jsonl", [*samples, broken])
    out = root / "selection"
    overrides = [*sft["base"], f"data.train_path={data}", "data.max_skipped_fraction=0.5"]
    overrides += ["selection.repeats=4", "selection.prompts_per_call=8"]
    assert main(["select", str(EXAMPLE), *overrides, "--model", sft["model"], "--out", str(out)]) == 0

    summary = json.loads((out / "summary.json").read_text())
    stats = [SimpleNamespace(**row) for row in pq.read_table(out / "stats.parquet").to_pylist()]
    assert summary["samples"] == 13 and summary["skipped"] == 1 and summary["scored"] == len(stats) == 12
    assert all(s.k + s.failed == 4 for s in stats)  # K = 4 responses each
    assert all(v == v for s in stats for v in (s.mean, s.variance, s.std, s.pass_rate))  # no NaN
    kept = load_samples(out / "selected.jsonl", cfg.data)  # the format the trainer reads
    assert summary["kept"] == len(kept) == sum(summary["after"].values())
    assert summary["kept"] + sum(summary["dropped"].values()) == 12
    assert summary["kept"] > 0  # the warm start's answers vary on some samples
    by_id = {s.sample_id: s for s in stats}
    for sample in kept:  # every kept sample passed the default policy
        s = by_id[sample.id]
        assert s.variance > 1e-4 if s.task == "tvg" else 0 < s.pass_rate < 1
    assert (out / "variance.png").stat().st_size > 0
