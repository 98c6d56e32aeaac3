"""Every actor of every job is built here, from the config; the jobs only drive what they get.

    init_ray / ray_session    join cluster.address, or start a local cluster on 127.0.0.1
    reserved(cfg, ...)        the job's placement group: rollout and/or learner bundles, node pins
    rollout_pool(...)         RolloutPool: rollout.num_workers vLLM actors in the rollout bundles
    learner_group(...)        LearnerGroup: learner.num_ranks FSDP2 ranks in the learner bundles
    reward_pool(cfg)          RewardPool: cluster.reward_actors actors
    build_run(cfg, ...)       a GRPO run: the three pools, its data, inputs and metrics sink
    sft_learner(cfg, ...)     the SFT warm start's learner (cross-entropy, its own lr, no KL)
    serving(cfg, ...)         a rollout pool for `vidrl eval` and `vidrl select`

The train job reserves one placement group and builds the SFT warm start's learner and then the
GRPO run in it, so both honour `cluster.placement` and the node pins; eval and select reserve
the rollout bundles alone. A restart is "shut down, build again, resume": it works because
nothing else constructs an actor.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidrl.cluster.config import RunConfig
from vidrl.cluster.inputs import LearnerInputs
from vidrl.cluster.metrics import MetricsSink
from vidrl.cluster.quarantine import SampleFailures
from vidrl.cluster.resources import Placement, layout, placed_rollout_config
from vidrl.cluster.sampler import PromptSampler
from vidrl.data.readers import load_samples
from vidrl.data.sample import Sample
from vidrl.data.skips import SkipLog
from vidrl.rollout.config import RolloutConfig
from vidrl.selection.gates import Gate, NoGate, build_gate

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 120.0
"""How long a placement group may take to be granted before the job says what it asked for."""


@dataclass
class Run:
    """Everything a running GRPO job holds; `shutdown` stops only what was started for it."""

    cfg: RunConfig
    samples: list[Sample]
    sampler: PromptSampler
    skips: SkipLog
    inputs: LearnerInputs
    rollout: Any
    rewards: Any
    learner: Any
    sink: MetricsSink
    placement: Placement | None = None
    """The run's own placement group, removed at shutdown (None: the caller's, left alone)."""
    started_ray: bool = False
    weights_version: int = 0
    restarts: int = 0
    """Faults this run recovered from (vidrl.cluster.recovery); logged with every step."""
    gate: Gate = field(default_factory=NoGate)
    failures: SampleFailures = field(default_factory=lambda: sample_failures(RunConfig()))
    """Failures per sample, the quarantined ones (vidrl.cluster.quarantine)."""
    sampler_state: dict[str, Any] | None = None  # as of the last trained step (see driver.py)
    gate_state: dict[str, Any] | None = None  # likewise
    failures_state: dict[str, Any] | None = None  # likewise

    def shutdown(self) -> None:
        import ray

        for part in (self.rollout, self.rewards, self.learner):
            if part is not None:
                part.shutdown()
        self.sink.close()
        if self.placement is not None:
            self.placement.remove()
        if self.started_ray:
            ray.shutdown()


# ---------------------------------------------------------------- Ray and placement


def init_ray(cfg: RunConfig) -> bool:
    """Join the configured cluster or start a local one; True when this call started it."""
    # Read when ray is imported: without it Ray swaps 127.0.0.1 for the machine's address.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Ray runs its workers at niceness 15 by default: on a busy machine the rollout and learner
    # actors would then lose the CPU to everything else.
    os.environ.setdefault("RAY_worker_niceness", "0")
    import ray

    if ray.is_initialized():
        return False
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")  # `ray job submit` sets RAY_ADDRESS
    if address is not None:
        ray.init(address=address, log_to_driver=False)
        return True
    # A local cluster stays on loopback: its processes, and the learner's process group,
    # which meets at the node's address.
    ray.init(
        address="local",
        num_cpus=cfg.cluster.local_num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    return True


@contextlib.contextmanager
def ray_session(cfg: RunConfig) -> Iterator[None]:
    """`init_ray(cfg)` for the duration of a block; a cluster started here is stopped after it."""
    started = init_ray(cfg)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def reserve(cfg: RunConfig, rollout: bool = True, learner: bool = True) -> Placement:
    """Reserve the bundles of the sides asked for (vidrl.cluster.resources); where each rollout
    worker and learner rank runs. A cluster that cannot hold them fails fast, saying why."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from vidrl.rollout.placement import WorkerPlacement, uses_gpu_ranks

    plan = layout(cfg, rollout=rollout, learner=learner)
    group = placement_group(plan.bundles, strategy="PACK")
    try:
        ray.get(group.ready(), timeout=READY_TIMEOUT_SECONDS)
    except ray.exceptions.GetTimeoutError:
        ray.util.remove_placement_group(group)
        raise RuntimeError(
            f"the cluster cannot hold the run's actors: asked for bundles {plan.bundles}, "
            f"the cluster has {ray.cluster_resources()} (lower cpus/gpus per worker or rank)"
        ) from None
    log.info("placement group ready: %d bundles %s", len(plan.bundles), plan.bundles)

    def strategy(index: int) -> Any:
        return PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=index)

    gpu_ranks = uses_gpu_ranks(cfg.rollout)
    workers = [WorkerPlacement(strategy(span[0]), span if gpu_ranks else ()) for span in plan.rollout]
    return Placement(group, workers, [strategy(i) for i in plan.learner])


@contextlib.contextmanager
def reserved(cfg: RunConfig, rollout: bool = True, learner: bool = True) -> Iterator[Placement]:
    """`reserve` for the duration of a block; the bundles go back to the cluster after it."""
    placement = reserve(cfg, rollout=rollout, learner=learner)
    try:
        yield placement
    finally:
        placement.remove()


# ---------------------------------------------------------------- the pools


def rollout_pool(
    cfg: RunConfig, model_path: str, placement: Placement, rollout_cfg: RolloutConfig | None = None
) -> Any:
    """The RolloutPool in the rollout bundles of `placement` (rollout_cfg: default the run's, as placed)."""
    from vidrl.rollout.pool import RolloutPool

    return RolloutPool(rollout_cfg or placed_rollout_config(cfg), model_path, scheduling=placement.rollout)


def learner_group(cfg: RunConfig, model_path: str, placement: Placement) -> Any:
    """The GRPO LearnerGroup in the learner bundles of `placement`: log-probs at the rollout's
    temperature, weights exported in the engines' dtype."""
    from vidrl.learner.group import LearnerGroup

    return LearnerGroup(
        model_path,
        cfg.learner,
        seed=cfg.seed,
        scheduling=placement.learner,
        temperature=cfg.rollout.temperature,
        export_dtype=cfg.rollout.dtype,
    )


def sft_learner(cfg: RunConfig, placement: Placement) -> Any:
    """The SFT warm start's LearnerGroup from cfg.model_path, in the learner bundles of
    `placement`: the learner's config with `trainer.sft_lr` and no KL term (there is no
    reference policy to stay near), log-probs at temperature 1 (plain cross-entropy)."""
    from vidrl.learner.group import LearnerGroup

    if cfg.model_path is None:
        raise ValueError("SFT needs model_path")
    no_kl = cfg.learner.loss.model_copy(update={"kl_coef": 0.0})
    learner_cfg = cfg.learner.model_copy(update={"lr": cfg.trainer.sft_lr, "loss": no_kl})
    return LearnerGroup(cfg.model_path, learner_cfg, seed=cfg.seed, scheduling=placement.learner)


def reward_pool(cfg: RunConfig) -> Any:
    """The RewardPool of `cluster.reward_actors` actors scoring with `cfg.rewards`."""
    from vidrl.rewards.pool import RewardPool

    c = cfg.cluster
    return RewardPool(
        cfg.rewards,
        c.reward_actors,
        c.cpus_per_reward_actor,
        c.gpus_per_reward_actor,
        c.reward_timeout_seconds,
    )


@contextlib.contextmanager
def serving(cfg: RunConfig, rollout_cfg: RolloutConfig, model_path: str) -> Iterator[Any]:
    """A RolloutPool of `rollout_cfg` on `model_path` in its own rollout bundles (no learner),
    for evaluation and selection; stopped, and its bundles given back, after the block."""
    with reserved(cfg, learner=False) as placement:
        pool = rollout_pool(cfg, model_path, placement, rollout_cfg)
        try:
            yield pool
        finally:
            pool.shutdown()


# ---------------------------------------------------------------- a GRPO run


def build_run(cfg: RunConfig, model_path: str | None = None, placement: Placement | None = None) -> Run:
    """Start every actor a GRPO run needs (model_path overrides cfg.model_path) in `placement`
    (None: the run reserves its own and gives it back at shutdown)."""
    path = model_path or cfg.model_path
    if path is None or cfg.data.train_path is None:
        raise ValueError("a run needs model_path and data.train_path")
    skips = SkipLog(cfg.data.max_skipped_fraction)
    samples = load_samples(cfg.data.train_path, cfg.data, skips)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    started = init_ray(cfg)
    owned = placement is None
    placement = reserve(cfg) if placement is None else placement
    try:
        rollout, learner, rewards = start_actors(cfg, path, placement)
    except BaseException:
        if owned:
            placement.remove()
        if started:
            import ray

            ray.shutdown()
        raise
    log.info(
        "run %s: %d samples, %d rollout workers, %d learner ranks, %d reward actors",
        cfg.run_name,
        len(samples),
        cfg.rollout.num_workers,
        cfg.learner.num_ranks,
        cfg.cluster.reward_actors,
    )
    return Run(
        cfg,
        samples,
        PromptSampler(samples, cfg.seed),
        skips,
        LearnerInputs(path, cfg.video, cfg.prompt),
        rollout,
        rewards,
        learner,
        metrics_sink(cfg),
        gate=build_gate(cfg.gate),
        failures=sample_failures(cfg, cfg.run_dir),
        placement=placement if owned else None,
        started_ray=started,
    )


def sample_failures(cfg: RunConfig, folder: Path | None = None) -> SampleFailures:
    """The run's failure counts and quarantine, as `data` configures them (quarantine.jsonl in `folder`)."""
    d = cfg.data
    return SampleFailures(d.max_sample_failures, d.failure_window_samples, d.max_failed_fraction, folder)


def metrics_sink(cfg: RunConfig) -> MetricsSink:
    """metrics.jsonl in the run directory, plus TensorBoard and W&B as the trainer config says."""
    t = cfg.trainer
    return MetricsSink(cfg.run_dir, t.tensorboard, t.wandb_project, cfg.run_name, cfg.model_dump(mode="json"))


def start_actors(cfg: RunConfig, path: str, placement: Placement) -> tuple[Any, Any, Any]:
    """The rollout pool, the learner group and the reward pool; on failure, none is left running."""
    started: list[Any] = []
    try:
        if placed_rollout_config(cfg).sleep_mode:
            # Shared GPUs: the engines start and sleep first, then the learner loads into the
            # memory they freed (vLLM refuses to start unless gpu_memory_fraction of it is free).
            rollout = rollout_pool(cfg, path, placement)
            started.append(rollout)
            rollout.sleep()
            learner = learner_group(cfg, path, placement)
            started.append(learner)
        else:
            # The engines and the learner ranks start at the same time (each takes seconds of imports).
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="start-rollout") as starter:
                starting = starter.submit(rollout_pool, cfg, path, placement)
                starting.add_done_callback(lambda f: f.exception() is None and started.append(f.result()))
                learner = learner_group(cfg, path, placement)
                started.append(learner)
            rollout = starting.result()
        rewards = reward_pool(cfg)
    except BaseException:
        for part in started:  # leaving the executor waited for the pool: it is here if it started
            part.shutdown()
        raise
    return rollout, learner, rewards
