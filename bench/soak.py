"""A long run of the demo's configuration with a schedule of faults: what each one costs.

    .venv/bin/python bench/soak.py [--steps 150] [--checkpoint-every 10] [--out soak.json]

Two runs of `--steps` GRPO steps on the same synthetic data and tiny model, each `vidrl train`
in a process of its own (its own local Ray cluster): a clean one, then one with these faults,
each at its own share of the steps (`SCHEDULE`):

    rollout worker   SIGKILL                       the pool restarts it with the last weights
    learner rank     SIGKILL                       the job rebuilds every actor, resumes
    reward actor     SIGSTOP                       the call times out, the actor is replaced
    non-finite loss  NaN on one rank               every rank skips that update
    corrupt video    a training video overwritten  its samples skipped, quarantined
    outside path     a record naming ../video      skipped when the data is read
    driver           SIGKILL in a checkpoint save  the same command again resumes

The faulty run is killed by its own hook while saving step `--kill-in-save`'s checkpoint and is
then started again with the same command. Prints one markdown table: each fault, its step, how
it showed, what recovered it, the seconds it cost (the fault's step time, or the time from the
fault to the next logged step, less the clean run's median step); then the steps completed
against those asked, the metric rows (missing, logged twice), samples skipped or quarantined
against those injected, and the wall time against the clean run's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve()
EXAMPLE = BENCH.parents[1] / "examples" / "synthetic.yaml"
SCHEDULE = {
    "rollout_kill": 0.1,
    "learner_kill": 0.233,
    "reward_stop": 0.367,
    "nan_loss": 0.5,
    "corrupt_video": 0.633,
}
"""When each in-run fault is injected, as a share of the run's steps (at 150 steps: 15, 35, 55, 75
and 95); the driver is killed in the last save before 80% of the steps (`--kill-in-save`)."""


def fault_steps(steps: int) -> dict[str, int]:
    return {fault: round(share * steps) for fault, share in SCHEDULE.items()}


FAULT_LOG = "soak_faults.jsonl"
INDICATORS = {
    "rollout_kill": ("rollout/worker_restarts", "weights_update/worker_restarts"),
    "reward_stop": ("reward/failures", "samples/failed"),
    "nan_loss": ("learner/skipped_updates",),
    "corrupt_video": ("samples/failed",),
}
"""The metrics in which each fault shows, in the first step it touches."""


# ---------------------------------------------------------------- the child: one `vidrl train`


def child(config: list[str], faults: bool) -> None:
    """Train, with the schedule's faults injected before their steps when `faults` (each once: a
    resumed run that passes a fault's step again does not inject it again)."""
    import ray

    from vidrl.cluster import driver, job
    from vidrl.cluster.config import load_run_config

    cfg = load_run_config(EXAMPLE, config)
    log_file = cfg.run_dir / FAULT_LOG
    done = (
        {json.loads(line)["fault"] for line in log_file.read_text().splitlines()}
        if log_file.exists()
        else set()
    )
    real_grpo_step = driver.grpo_step

    def pid(actor: Any) -> int:
        return int(ray.get(actor.__ray_call__.remote(lambda _: os.getpid())))

    def inject(run: Any, step: int, rollout: Any) -> Any:
        for fault, at in fault_steps(cfg.trainer.steps).items():
            if step == at and fault not in done:
                done.add(fault)
                _record(log_file, fault, step)
                _inject(fault, run, pid)
        return real_grpo_step(run, step, rollout)

    if faults:
        driver.grpo_step = inject
    job.train(cfg)


def _inject(fault: str, run: Any, pid: Any) -> None:
    import ray

    if fault == "rollout_kill":
        os.kill(pid(run.rollout.workers[0]), signal.SIGKILL)
    elif fault == "learner_kill":
        os.kill(pid(run.learner.workers[1]), signal.SIGKILL)
    elif fault == "reward_stop":
        os.kill(pid(run.rewards.actors[0]), signal.SIGSTOP)  # the pool kills it at its deadline
    elif fault == "nan_loss":
        ray.get(run.learner.workers[0].inject_nonfinite_loss.remote(1))
    elif fault == "corrupt_video":
        video = Path(run.samples[0].video)
        video.write_bytes(b"\x00not an mp4 any more")


def _record(log_file: Path, fault: str, step: int) -> None:
    with log_file.open("a") as handle:
        handle.write(json.dumps({"fault": fault, "step": step, "at": time.time()}) + "\n")


# ---------------------------------------------------------------- the parent


def prepare(folder: Path, videos: int) -> tuple[Path, Path, Path]:
    """Synthetic data (plus one record whose video lies outside its folder) and the tiny model."""
    from vidrl.data.synth import synthesize
    from vidrl.data.tiny import build_tiny_model

    data = synthesize(folder / "data", num_videos=videos, seed=0, test_fraction=0.2)
    records = json.loads((data.root / "train.json").read_text())
    records.append({**records[0], "video": "../../outside.mp4", "problem": "outside the folder"})
    (data.root / "train.json").write_text(json.dumps(records))
    return build_tiny_model(folder / "model"), data.train_yaml, folder / "runs"


def config(model: Path, train: Path, runs: Path, name: str, args: argparse.Namespace) -> list[str]:
    return [
        f"model_path={model}",
        f"data.train_path={train}",
        "data.eval_path=null",
        "data.max_skipped_fraction=0.2",
        f"output_dir={runs}",
        f"run_name={name}",
        f"trainer.steps={args.steps}",
        "trainer.sft_steps=20",
        f"trainer.checkpoint_every_steps={args.checkpoint_every}",
        "trainer.progress_bar=false",
        "trainer.tensorboard=false",
        "cluster.reward_timeout_seconds=10",
    ]


def run_child(settings: list[str], env: dict[str, str], log: Path) -> tuple[int, float]:
    """One `vidrl train` in its own process group, its output appended to `log`: its exit status
    and when it ended."""
    command = [sys.executable, str(BENCH), "--child", json.dumps(settings)]
    if env.get("VIDRL_SOAK_FAULTS") == "1":
        command.append("--faults")
    with log.open("a") as output:
        process = subprocess.Popen(
            command, env=env, start_new_session=True, stdout=output, stderr=subprocess.STDOUT
        )
        status = process.wait()
    ended = time.time()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # what a killed driver left of its local cluster
    return status, ended


def rows(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def report(
    args: argparse.Namespace, clean: dict[str, Any], faulty: dict[str, Any], run_dir: Path
) -> dict[str, Any]:
    logged = rows(run_dir)
    by_step = {int(r["step"]): r for r in logged}
    median = statistics.median(r["time/step"] for r in rows(clean["run_dir"]))
    faults = [json.loads(line) for line in (run_dir / FAULT_LOG).read_text().splitlines()]
    table = []
    for fault in faults:
        if fault["fault"] == "learner_kill":
            row = by_step[fault["step"]]  # the step done again by the rebuilt actors
            lost = row["time/finished_at"] - fault["at"] - median
            shown = f"learner rank 1 died in the step; run/restarts {row['run/restarts']:.0f}"
        else:
            keys = INDICATORS[fault["fault"]]
            shown_in = (
                r for r in logged if r["step"] >= fault["step"] and any(r.get(k, 0) > 0 for k in keys)
            )
            row = next(shown_in, None)
            if row is None:
                table.append(
                    {
                        "fault": fault["fault"],
                        "step": fault["step"],
                        "shown": "NOT SEEN in " + ", ".join(keys),
                        "seconds_lost": None,
                    }
                )
                continue
            lost = row["time/step"] - median
            shown = f"step {row['step']:.0f}: " + ", ".join(f"{k} {row.get(k, 0):.0f}" for k in keys)
        table.append(
            {"fault": fault["fault"], "step": fault["step"], "shown": shown, "seconds_lost": round(lost, 1)}
        )
    resumed = by_step[args.kill_in_save]
    table.append(
        {
            "fault": "driver_kill_in_save",
            "step": args.kill_in_save,
            "shown": "the command again: the half-written checkpoint removed, resumed from the one before",
            "seconds_lost": round(resumed["time/finished_at"] - faulty["killed_at"] - median, 1),
        }
    )
    steps = [int(r["step"]) for r in logged]
    quarantine = run_dir / "quarantine.jsonl"
    return {
        "faults": table,
        "steps_completed": len(set(steps)),
        "steps_asked": args.steps,
        "rows_missing": sorted(set(range(args.steps)) - set(steps)),
        "rows_twice": sorted({s for s in steps if steps.count(s) > 1}),
        "quarantined": sorted(
            {json.loads(line)["sample"] for line in quarantine.read_text().splitlines()}
            if quarantine.exists()
            else set()
        ),
        "quarantine_lines": len(quarantine.read_text().splitlines()) if quarantine.exists() else 0,
        "skipped_by_last_start": json.loads((run_dir / "summary.json").read_text())["skipped_samples"],
        "wall_seconds": round(faulty["wall"], 1),
        "clean_wall_seconds": round(clean["wall"], 1),
        "median_step_seconds": round(median, 2),
        "load_average": os.getloadavg()[0],
    }


def print_report(result: dict[str, Any]) -> None:
    print("| fault | step | how it showed | seconds lost |\n| --- | ---: | --- | ---: |")
    for fault in result["faults"]:
        print(f"| {fault['fault']} | {fault['step']} | {fault['shown']} | {fault['seconds_lost']} |")
    print(
        f"\nsteps completed {result['steps_completed']} of {result['steps_asked']}; metric rows missing "
        f"{result['rows_missing']}, logged twice {result['rows_twice']}; samples quarantined "
        f"{result['quarantined']} ({result['quarantine_lines']} lines in quarantine.jsonl); samples "
        f"skipped (when read or decoded) by the last start {result['skipped_by_last_start']}; wall "
        f"{result['wall_seconds']} s against {result['clean_wall_seconds']} s clean (median step "
        f"{result['median_step_seconds']} s); load average {result['load_average']:.1f}"
    )


def fail(why: str, log: Path) -> None:
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
    raise SystemExit(f"{tail}\n\n{why} (the last lines of its output above)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--kill-in-save", type=int, default=None, help="the save the driver is killed in")
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--faults", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(json.loads(args.child), args.faults)
        return
    if args.kill_in_save is None:
        args.kill_in_save = int(0.8 * args.steps) // args.checkpoint_every * args.checkpoint_every
    from vidrl.cluster.job import FAULT_KILL_IN_SAVE

    keep = contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory()
    with keep as name:
        Path(name).mkdir(parents=True, exist_ok=True)
        model, train, runs = prepare(Path(name), args.videos)
        env = dict(os.environ)
        started = time.time()
        log = Path(name) / "soak.log"
        status, _ = run_child(config(model, train, runs, "clean", args), env, log)
        if status != 0:
            fail(f"the clean run failed ({status})", log)
        clean = {"wall": time.time() - started, "run_dir": runs / "clean"}
        faulty_settings = config(model, train, runs, "faulty", args)
        started = time.time()
        faults = env | {"VIDRL_SOAK_FAULTS": "1"}
        kill_in_save = faults | {FAULT_KILL_IN_SAVE: str(args.kill_in_save)}
        status, killed_at = run_child(faulty_settings, kill_in_save, log)
        if status != -signal.SIGKILL:
            fail(f"the faulty run ended with {status}, not killed in its step-{args.kill_in_save} save", log)
        status, _ = run_child(faulty_settings, faults, log)
        if status != 0:
            fail(f"the resumed faulty run failed ({status})", log)
        faulty = {"wall": time.time() - started, "killed_at": killed_at}
        result = report(args, clean, faulty, runs / "faulty")
    print_report(result)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
