"""The whole pipeline, small: SFT warm start, GRPO with vLLM rollout, reward pool and a 2-rank
FSDP2 learner, one step off-policy, the online gate with refills, checkpoints, and a resumed run
that goes on from the last checkpoint with the next unseen prompts and the same gate state."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from small_runs import read_metrics, short_run

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]

DIGITS = f"{Path(__file__).parent / 'rewards_for_tests.py'}:digit_share"
PHASES = ("data", "rollout", "reward", "prepare", "learn", "sync")


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from vidrl.data.synth import synthesize
    from vidrl.data.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("pipeline")
    data = synthesize(root / "data", num_videos=6, seed=1)
    return {
        "model": build_tiny_model(root / "model"),
        "train": data.train_yaml,
        "test": data.test_yaml,
        "runs": root / "runs",
    }


def config(assets: dict[str, Path], steps: int) -> object:
    from vidrl.cluster.config import load_run_config

    return load_run_config(
        Path(__file__).parents[1] / "examples" / "synthetic.yaml",
        [
            f"model_path={assets['model']}",
            f"data.train_path={assets['train']}",
            f"data.eval_path={assets['test']}",
            f"output_dir={assets['runs']}",
            "run_name=smoke",
            f"trainer.steps={steps}",
            "trainer.sft_steps=2",
            "trainer.sft_prompts_per_step=4",
            "trainer.prompts_per_step=2",
            "rollout.samples_per_prompt=3",
            "rollout.max_response_tokens=12",
            "trainer.eval_max_samples=3",
            "trainer.checkpoint_every_steps=2",
            "trainer.eval_every_steps=2",
            "trainer.max_staleness=1",
            "trainer.progress_bar=false",
            "trainer.tensorboard=true",
            # The tiny model's answers after 2 SFT steps score 0 under every real reward: the share
            # of digits gives groups spread (or, by chance, none) for the gate to judge.
            "rewards.preset=null",
            f"rewards.components=[{{name: digits, fn: '{DIGITS}', per_sample: true}}]",
            "gate.enabled=true",
            "gate.max_refill_rounds=1",
            # The learner's own old log-probs, from a forward pass before the update: the step's
            # mismatch against the engine's is then measured (and must be rounding at step 0).
            "learner.old_logprobs=recompute",
        ],
    )


def prompts_drawn(sampler_state: dict[str, int]) -> int:
    """Prompts the sampler has handed out: whole epochs plus the position in the current one."""
    return sampler_state["epoch"] * sampler_state["num_samples"] + sampler_state["position"]


def test_train_then_resume(assets: dict[str, Path]) -> None:
    from vidrl.cluster.job import train
    from vidrl.cluster.plots import plot_run

    cfg = config(assets, steps=3)
    summary = train(cfg)  # type: ignore[arg-type]
    run_dir = Path(summary["run_dir"])
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert [r["weights_version"] for r in rows] == [1, 2, 3]
    # 2 prompts a step, plus at most one refill of the groups the gate dropped
    assert all(2 <= r["groups/drawn"] <= 4 for r in rows)
    assert all(r["rollout/responses"] == 3 * r["groups/generated"] for r in rows)  # 3 samples each
    assert all(r["groups/trained"] == r["groups/kept"] <= 2 for r in rows)
    assert sum(r["groups/trained"] for r in rows) >= 1
    assert {"time/rollout", "time/learn", "time/sync", "learner/grad_norm", "reward/mean"} <= rows[0].keys()
    # One step off-policy: step t+1's collection runs while step t learns, timed by its own step.
    # So a row's phases add up to its step's wall time plus the part of its collection that ran
    # during the step before (time/overlap), never more: no row holds another step's seconds.
    for row in rows:
        spent = sum(row[f"time/{phase}"] for phase in PHASES)
        assert spent <= row["time/step"] + row["time/overlap"] + 1e-3, row
    assert rows[0]["time/overlap"] == 0.0 and max(r["time/overlap"] for r in rows[1:]) > 0
    # Step 0 was sampled by the engine from the weights the learner starts from (later steps one
    # update behind): the learner's recomputed log-probs equal the engine's, float32 on both sides.
    assert rows[0]["groups/trained"] >= 1 and rows[0]["learner/mismatch/abs_log_ratio"] < 2e-4
    assert "eval_before" in summary and "eval_after" in summary and "reward" in summary["eval_after"]
    # every 2 steps a held-out evaluation is logged with the step's row (not after the last step)
    assert ["eval/tvg/mIoU" in r for r in rows] == [False, True, False]
    assert (run_dir / "checkpoints" / "step_000002" / "COMPLETE").exists()  # every 2 steps
    mid = json.loads((run_dir / "checkpoints" / "step_000002" / "trainer_state.json").read_text())["extra"]
    # step 2 was already drawn (staleness 1) but is not counted: the resumed run draws it again
    assert prompts_drawn(mid["sampler"]) == sum(r["groups/drawn"] for r in rows[:2])
    assert mid["gate"] == {
        "groups_seen": int(rows[1]["gate/groups_seen"]),
        "groups_kept": int(rows[1]["gate/groups_kept"]),
    }
    assert (run_dir / "checkpoints" / "step_000003" / "hf" / "model.safetensors").exists()  # final
    assert (run_dir / "sft" / "hf" / "config.json").exists() and any((run_dir / "tb").iterdir())
    state = json.loads((run_dir / "checkpoints" / "step_000003" / "trainer_state.json").read_text())
    assert prompts_drawn(state["extra"]["sampler"]) == sum(r["groups/drawn"] for r in rows)  # none replayed
    assert len(plot_run(run_dir)) == 6  # the dashboard and its five panels

    resumed = train(config(assets, steps=5))  # type: ignore[arg-type]
    assert resumed["start_step"] == 3 and "eval_before" not in resumed
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]  # went on where it stopped
    assert [r["weights_version"] for r in rows][3:] == [4, 5]
    seen = kept = 0
    for row in rows:  # the gate's counts run on across the resume
        seen, kept = seen + row["groups/generated"], kept + row["groups/kept"]
        assert (row["gate/groups_seen"], row["gate/groups_kept"]) == (seen, kept)
    state = json.loads((run_dir / "checkpoints" / "step_000005" / "trainer_state.json").read_text())
    assert prompts_drawn(state["extra"]["sampler"]) == sum(r["groups/drawn"] for r in rows)


def test_a_rollout_worker_killed_mid_run_is_restarted(assets: dict[str, Path]) -> None:
    import ray

    from vidrl.cluster.build import build_run
    from vidrl.cluster.driver import run_grpo

    base = config(assets, steps=3)
    synchronous = base.trainer.model_copy(update={"max_staleness": 0})  # type: ignore[attr-defined]
    # synchronous: the next call on the dead worker is step 1's generate, deterministically
    cfg = base.model_copy(update={"run_name": "killed", "trainer": synchronous})  # type: ignore[attr-defined]
    run = build_run(cfg)
    killed: list[int] = []

    def kill_after_first_step(step: int, metrics: dict[str, float]) -> None:
        if step == 0:
            ray.kill(run.rollout.workers[0], no_restart=True)  # as if its engine died
            killed.append(step)

    try:
        run_grpo(run, 0, kill_after_first_step)
    finally:
        run.shutdown()
    rows = read_metrics(cfg.run_dir)
    assert killed == [0]
    assert [r["step"] for r in rows] == [0, 1, 2]  # the run went on
    assert [r["rollout/worker_restarts"] for r in rows] == [0, 1, 0]
    assert rows[-1]["weights_version"] == 3


def test_a_killed_driver_resumes_from_its_last_checkpoint(assets: dict[str, Path]) -> None:
    """`vidrl train` killed (SIGKILL, with its local Ray cluster) right after a checkpoint; the
    rerun goes on from that checkpoint with the next unseen prompts."""
    import os
    import signal
    import subprocess
    import sys

    overrides = [
        f"model_path={assets['model']}",
        f"data.train_path={assets['train']}",
        "data.eval_path=null",
        f"output_dir={assets['runs']}",
        "run_name=killed_driver",
        "trainer.steps=4",
        "trainer.sft_steps=0",
        "trainer.prompts_per_step=2",
        "rollout.samples_per_prompt=2",
        "rollout.max_response_tokens=8",
        "trainer.checkpoint_every_steps=1",
    ]
    example = str(Path(__file__).parents[1] / "examples" / "synthetic.yaml")
    command = [sys.executable, "-m", "vidrl.cli", "train", example, *overrides]
    driver = subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True
    )
    assert driver.stderr is not None
    for line in driver.stderr:  # blocks on the driver's own log lines: no sleeping
        if "checkpoint after step 2" in line:
            os.killpg(driver.pid, signal.SIGKILL)
            break
    driver.wait(timeout=60)
    assert driver.returncode == -signal.SIGKILL
    run_dir = assets["runs"] / "killed_driver"
    assert not (run_dir / "checkpoints" / "step_000004").exists()

    from vidrl.cluster.config import load_run_config
    from vidrl.cluster.job import train

    summary = train(load_run_config(example, overrides))
    assert summary["start_step"] == 2
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]  # no step logged twice, none missing
    state = json.loads((run_dir / "checkpoints" / "step_000004" / "trainer_state.json").read_text())
    assert prompts_drawn(state["extra"]["sampler"]) == 8  # 4 steps x 2 prompts: no replay, no skip


def checkpoint_names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def test_a_save_killed_midway_costs_that_save_only(assets: dict[str, Path]) -> None:
    """A driver killed (SIGKILL) while its step-3 checkpoint is half written; its newest finished
    checkpoint then damaged and a metrics line torn. The rerun removes the half checkpoint, skips
    the damaged one, resumes from the one before, logs each step once and keeps the newest two.
    A rerun with another learning rate is refused naming it, and accepted with --resume-anyway."""
    import os
    import signal
    import subprocess
    import sys

    from vidrl.cluster.config import load_run_config
    from vidrl.cluster.identity import ConfigChanged
    from vidrl.cluster.job import FAULT_KILL_IN_SAVE, train

    overrides = [*short_run(assets, "killed_in_save", steps=4), "trainer.keep_checkpoints=2"]
    example = str(Path(__file__).parents[1] / "examples" / "synthetic.yaml")
    command = [sys.executable, "-m", "vidrl.cli", "train", example, *overrides]
    env = os.environ | {FAULT_KILL_IN_SAVE: "3"}  # after step 3's files are written, before COMPLETE
    run_dir = assets["runs"] / "killed_in_save"
    log = assets["runs"].parent / "killed_in_save.log"
    with log.open("w") as output:
        driver = subprocess.Popen(command, env=env, stdout=output, stderr=output, start_new_session=True)
        returncode = driver.wait(timeout=600)
    # The driver killed itself; its local Ray cluster's processes are in its process group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(driver.pid, signal.SIGKILL)
    assert returncode == -signal.SIGKILL, log.read_text()[-3000:]
    assert checkpoint_names(run_dir) == [".step_000003.partial", "step_000001", "step_000002"]
    shard = next((run_dir / "checkpoints" / "step_000002" / "state").glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-10])  # the newest finished checkpoint, damaged
    with (run_dir / "metrics.jsonl").open("a") as metrics:
        metrics.write('{"step": 3, "learner/lo')  # a line torn by the kill

    summary = train(load_run_config(example, overrides))
    assert summary["start_step"] == 1  # step 2's checkpoint could not be read: the one before it
    assert [r["step"] for r in read_metrics(run_dir)] == [0, 1, 2, 3]  # once each, nothing torn
    assert checkpoint_names(run_dir) == ["step_000003", "step_000004"]  # keep_checkpoints: 2

    changed = [*overrides, "learner.lr=2e-3", "trainer.steps=5"]
    with pytest.raises(ConfigChanged, match=r"learner\.lr: 0\.001 -> 0\.002"):
        train(load_run_config(example, changed))
    assert checkpoint_names(run_dir) == ["step_000003", "step_000004"]  # refused before any work
    resumed = train(load_run_config(example, changed), resume_anyway=True)
    assert resumed["start_step"] == 4 and [r["step"] for r in read_metrics(run_dir)] == [0, 1, 2, 3, 4]
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert history[-1]["accepted_changes"] == ["learner.lr: 0.001 -> 0.002"]
    assert "lr: 0.002" in (run_dir / "config.yaml").read_text()  # describes the newest checkpoint


def test_updates_that_keep_going_bad_stop_the_run(
    assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every loss NaN from the start: each step skips its update (weights version and checkpoints
    unchanged), and the third in a row stops the run naming the step and the reason."""
    import ray

    from vidrl.cluster import job
    from vidrl.cluster.config import load_run_config
    from vidrl.cluster.driver import NonFiniteUpdates

    real_run_grpo = job.run_grpo

    def poisoned(run: object, *args: object) -> None:
        ray.get([w.inject_nonfinite_loss.remote(10_000) for w in run.learner.workers])  # type: ignore[attr-defined]
        real_run_grpo(run, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(job, "run_grpo", poisoned)
    example = Path(__file__).parents[1] / "examples" / "synthetic.yaml"
    cfg = load_run_config(example, short_run(assets, "non_finite", steps=6))
    with pytest.raises(NonFiniteUpdates, match=r"step 2: 3 updates in a row .*loss not finite \(samples "):
        job.train(cfg)
    rows = read_metrics(cfg.run_dir)
    assert [r["learner/skipped_updates"] for r in rows] == [1.0, 1.0, 1.0]
    assert [r["weights_version"] for r in rows] == [0.0, 0.0, 0.0]  # nothing was pushed
    assert checkpoint_names(cfg.run_dir) == ["step_000001", "step_000002"]  # none after the stop
    state = json.loads((cfg.run_dir / "checkpoints" / "step_000002" / "trainer_state.json").read_text())
    assert state["step"] == 0 and state["extra"]["weights_version"] == 0  # no optimizer step taken
