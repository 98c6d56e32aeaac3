"""The pipeline on Ray clusters it did not start: `ray job submit`, and two nodes.

1. A `ray start --head` this test owns (loopback, its own temp dir and auth token) takes the
   command a user types, `ray job submit --working-dir <repo> -- vidrl train
   examples/synthetic.yaml ...`; the job must succeed and leave metrics and a checkpoint, and
   the uploaded working dir must leave out the repo's .venv. Only that head is stopped,
   through the process this test started (`ray stop` would end every Ray process on the host).
2. A head plus two nodes (`ray.cluster_utils.Cluster`), one offering `rollout_node`, the other
   `learner_node`: `vidrl.cluster.job.train` pins the rollout worker to the first and the
   learner ranks to the second, so every weight push crosses nodes through the object store;
   the SFT warm start's ranks run on the learner node too, in the job's one placement group.

Both run the demo config at a tiny size (2 steps of 2 prompts x 2 samples, no SFT) on data and a
model built in a temp dir.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent  # not resolved: the venv's bin, not the base Python's
RAY = str(VENV_BIN / "ray")
HEAD_READY_LINE = "Ray runtime started."
HEAD_START_TIMEOUT_SECONDS = 180
JOB_TIMEOUT_SECONDS = 480
STOP_TIMEOUT_SECONDS = 90
SUBMIT_ATTEMPTS = 30  # each a real submit (a second or two); the agent can take a minute under load
MAX_UPLOAD_BYTES = 50 * 2**20
"""The repo without its ignored paths is a few MB; with .venv it would be GBs."""


@dataclass(frozen=True)
class TinyAssets:
    model: Path
    train_yaml: Path
    test_yaml: Path


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> TinyAssets:
    from vidrl.data.synth import synthesize
    from vidrl.data.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("cluster_jobs")
    synth = synthesize(root / "data", num_videos=8)
    return TinyAssets(build_tiny_model(root / "model"), synth.train_yaml, synth.test_yaml)


def tiny_overrides(assets: TinyAssets, output_dir: Path, learner_ranks: int) -> list[str]:
    """Dotted overrides that shrink examples/synthetic.yaml to well under a minute of work."""
    return [
        f"model_path={assets.model}",
        f"data.train_path={assets.train_yaml}",
        f"data.eval_path={assets.test_yaml}",
        f"output_dir={output_dir}",
        "trainer.steps=2",
        "trainer.sft_steps=0",
        "trainer.prompts_per_step=2",
        "trainer.eval_max_samples=2",
        "trainer.progress_bar=false",
        "rollout.samples_per_prompt=2",
        "rollout.max_response_tokens=16",
        f"learner.num_ranks={learner_ranks}",
    ]


def assert_finished_run(run_dir: Path, context: str = "") -> list[dict[str, Any]]:
    """2 steps in metrics.jsonl, each pushing the next weights version, and the final checkpoint."""
    metrics_file = run_dir / "metrics.jsonl"
    assert metrics_file.exists(), f"no metrics.jsonl in {run_dir}\n{context}"
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    assert [r["weights_version"] for r in rows] == [1.0, 2.0]  # one push after each step
    assert all(r["rollout/worker_restarts"] == 0.0 for r in rows)  # no retry hid a failed push
    assert (run_dir / "checkpoints" / "step_000002" / "COMPLETE").exists()
    assert json.loads((run_dir / "summary.json").read_text())["checkpoint"].endswith("step_000002")
    return rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def short_temp_dir(prefix: str) -> Path:
    # Ray's unix sockets live under the temp dir and their paths must stay under 108 bytes,
    # which pytest's tmp_path (deep) can exceed.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def processes_with_env(name: str, value: str) -> list[psutil.Process]:
    """Other processes whose environment sets `name` to `value`: a cluster's processes inherit
    the environment it was started with, so a value unique to one cluster finds all of them."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(name) == value:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def kill_leftovers(name: str, value: str) -> list[str]:
    """Waits for the processes marked by `name=value` to exit, kills those that do not;
    returns what had to be killed."""
    _, alive = psutil.wait_procs(processes_with_env(name, value), timeout=STOP_TIMEOUT_SECONDS)
    for proc in alive:
        proc.kill()
    return [f"{p.pid} {p.name()}" for p in alive]


@dataclass
class RayHead:
    """A `ray start --head --block` owned by this test; stopping it stops its whole cluster."""

    process: subprocess.Popen[str]
    dashboard: str
    env: dict[str, str]
    temp_dir: Path
    output: deque[str] = field(default_factory=lambda: deque(maxlen=200))

    @property
    def token(self) -> str:
        return self.env["RAY_AUTH_TOKEN"]

    def ray(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """A `ray` CLI call as a client of this cluster (same token)."""
        return subprocess.run(
            [RAY, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def stop(self) -> list[str]:
        """SIGTERM to `ray start`, which drains the node and ends what it started; then
        whatever still holds this cluster's token is killed. Returns what had to be killed."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # `ray start` leads its own group
                self.process.wait()
        killed = kill_leftovers("RAY_AUTH_TOKEN", self.token)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return killed


def start_head() -> RayHead:
    temp_dir = short_temp_dir("vrj")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env |= {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keeps 127.0.0.1 as the node's address
        # Token auth as Ray defaults to it, with a token of this cluster's own (never the
        # user's ~/.ray/auth_token); it also marks every process the cluster spawns.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        # As if the venv were activated where `ray start` runs: jobs find `vidrl` on PATH.
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    dashboard_port = free_port()
    command = [
        RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=2",
        "--disable-usage-stats", f"--temp-dir={temp_dir}",
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    head = RayHead(process, f"http://127.0.0.1:{dashboard_port}", env, temp_dir)
    ready = threading.Event()

    def drain() -> None:
        # Reads to the end, so a full pipe never blocks `ray start`; EOF also ends the wait.
        assert process.stdout is not None
        for line in process.stdout:
            head.output.append(line)
            if HEAD_READY_LINE in line:
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(HEAD_START_TIMEOUT_SECONDS) or process.poll() is not None:
        head.stop()
        pytest.fail("ray start --head did not come up:\n" + "".join(head.output))
    return head


@pytest.fixture
def ray_head() -> Iterator[RayHead]:
    head = start_head()
    try:
        yield head
    finally:
        head.stop()  # a no-op when the test stopped it already


def uploaded_working_dirs(head: RayHead) -> list[Path]:
    resources = head.temp_dir / "session_latest" / "runtime_resources" / "working_dir_files"
    return sorted(p for p in resources.glob("_ray_pkg_*") if p.is_dir())  # not the .zip beside it


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def test_job_submit_runs_the_demo(ray_head: RayHead, assets: TinyAssets, tmp_path: Path) -> None:
    overrides = tiny_overrides(assets, tmp_path / "runs", learner_ranks=2)
    submission_id = f"vidrl-{ray_head.token[:8]}"
    dashboard = ray_head.dashboard
    for _attempt in range(SUBMIT_ATTEMPTS):
        submitted = ray_head.ray(
            "job", "submit", "--address", dashboard, "--submission-id", submission_id,
            "--working-dir", str(REPO), "--", "vidrl", "train", "examples/synthetic.yaml", *overrides,
            timeout=JOB_TIMEOUT_SECONDS,
        )  # fmt: skip
        # A loaded head may answer before its job agent is up; Ray says to try again.
        if "No available agent to submit job" not in submitted.stderr:
            break
    log_tail = (submitted.stdout + submitted.stderr)[-4000:]
    status = ray_head.ray("job", "status", "--address", dashboard, submission_id, timeout=60)
    assert f"Job '{submission_id}' succeeded" in status.stdout, log_tail
    assert submitted.returncode == 0, log_tail
    assert_finished_run(tmp_path / "runs" / "synthetic", log_tail)
    # The upload honoured .gitignore: the repo's code and examples, not its .venv or runs.
    (package,) = uploaded_working_dirs(ray_head)
    assert (package / "examples" / "synthetic.yaml").exists()
    assert (package / "vidrl" / "cluster" / "job.py").exists()
    assert not (package / ".venv").exists()
    assert tree_bytes(package) < MAX_UPLOAD_BYTES
    token = ray_head.token
    assert processes_with_env("RAY_AUTH_TOKEN", token), "the checks below would pass vacuously"
    assert ray_head.stop() == []  # nothing of this cluster had to be killed by hand
    assert processes_with_env("RAY_AUTH_TOKEN", token) == []


@dataclass
class TwoNodes:
    cluster: Any
    rollout_node_id: str
    learner_node_id: str


@pytest.fixture
def two_nodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[TwoNodes]:
    import ray
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized(), "an earlier test left Ray connected; train() would reuse it"
    temp_dir = short_temp_dir("vrn")
    # Session dirs and the cluster-address file go here, not to the /tmp/ray other runs share.
    monkeypatch.setenv("RAY_TMPDIR", str(temp_dir))
    loopback = {"node_ip_address": "127.0.0.1"}
    cluster = Cluster(
        initialize_head=True, head_node_args={**loopback, "num_cpus": 1, "include_dashboard": False}
    )
    try:
        # Logical CPUs: the rollout worker takes 0.5, the two learner ranks 0.5 each.
        rollout = cluster.add_node(**loopback, num_cpus=1, resources={"rollout_node": 1})
        learner = cluster.add_node(**loopback, num_cpus=1, resources={"learner_node": 1})
        assert processes_with_env("RAY_TMPDIR", str(temp_dir)), "the leftover check is vacuous"
        yield TwoNodes(cluster, rollout.node_id, learner.node_id)
    finally:
        cluster.shutdown()  # this cluster's nodes only
        killed = kill_leftovers("RAY_TMPDIR", str(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert killed == [], "cluster.shutdown() left these processes running"


def node_ids(actors: Any) -> list[str]:
    import ray

    def node_of(_actor: Any) -> str:
        return ray.get_runtime_context().get_node_id()

    # A local function travels by value (the workers cannot import this test module).
    return ray.get([a.__ray_call__.remote(node_of) for a in actors])


def placement_groups(actors: list[Any]) -> list[str | None]:
    """The id of the placement group each actor was scheduled in (None: none)."""
    import ray

    def group_of(_actor: Any) -> str | None:
        group = ray.util.get_current_placement_group()
        return None if group is None else group.id.hex()

    return ray.get([a.__ray_call__.remote(group_of) for a in actors])


def test_two_nodes_pin_rollout_and_learner_apart(
    two_nodes: TwoNodes, assets: TinyAssets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    from vidrl.cluster import job, sft
    from vidrl.cluster.config import load_run_config

    seen: dict[str, list[Any]] = {}
    real_run_grpo, real_sft_learner = job.run_grpo, sft.sft_learner

    def run_grpo_then_look(run: Any, *args: Any) -> None:
        # After the last step, before the actors are shut down: where they ran, and which
        # weights the rollout worker holds now.
        real_run_grpo(run, *args)
        seen["rollout"] = node_ids(run.rollout.workers)
        seen["learner"] = node_ids(run.learner.workers)
        seen["groups"] = placement_groups([*run.rollout.workers, *run.learner.workers])
        seen["versions"] = ray.get([w.weights_version.remote() for w in run.rollout.workers])

    def sft_learner_then_look(*args: Any) -> Any:
        learner = real_sft_learner(*args)  # the SFT warm start's ranks, as the job built them
        seen["sft"] = node_ids(learner.workers)
        seen["sft_groups"] = placement_groups(learner.workers)
        return learner

    monkeypatch.setattr(job, "run_grpo", run_grpo_then_look)
    monkeypatch.setattr(sft, "sft_learner", sft_learner_then_look)
    cfg = load_run_config(
        REPO / "examples" / "synthetic.yaml",
        [
            *tiny_overrides(assets, tmp_path / "runs", learner_ranks=2),
            f"cluster.address={two_nodes.cluster.address}",
            "cluster.rollout_node_resource=rollout_node",
            "cluster.learner_node_resource=learner_node",
            "trainer.sft_steps=1",  # the warm start's learner is pinned and placed like the run's
            "trainer.sft_prompts_per_step=2",
        ],
    )
    job.train(cfg)
    assert not ray.is_initialized()  # train() disconnected from the cluster it joined
    assert seen["rollout"] == [two_nodes.rollout_node_id]
    assert seen["learner"] == seen["sft"] == [two_nodes.learner_node_id] * 2
    # One placement group for the job: the SFT ranks, then the GRPO actors, all in it.
    (group,) = set(seen["groups"])
    assert group is not None and seen["sft_groups"] == [group] * 2
    assert two_nodes.rollout_node_id != two_nodes.learner_node_id
    # Version 2 came from the learner node: 2 steps, one push each (no restart reloaded it).
    assert seen["versions"] == [2]
    assert_finished_run(cfg.run_dir)
