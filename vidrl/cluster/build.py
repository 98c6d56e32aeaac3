"""Building every actor of a run from its config, in one place (the driver only drives them).

ray        join cluster.address, or start a local cluster on 127.0.0.1
data       training samples (skips counted), the resumable prompt sampler, the group gate
inputs     the processor-side data stage (decode once, prompts, learner groups)
rollout    RolloutPool: rollout.num_workers vLLM actors
rewards    RewardPool: cluster.reward_actors actors
learner    LearnerGroup: learner.num_ranks FSDP2 ranks
sink       metrics.jsonl, TensorBoard, W&B
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from vidrl.cluster.inputs import LearnerInputs
from vidrl.cluster.metrics import MetricsSink, PhaseTimer
from vidrl.cluster.resources import Placement, placed_rollout_config, scheduling_strategies
from vidrl.cluster.sampler import PromptSampler
from vidrl.config import RunConfig, dump_config
from vidrl.data.readers import load_samples
from vidrl.data.sample import Sample
from vidrl.data.skips import SkipLog
from vidrl.selection.gates import Gate, NoGate, build_gate

log = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything a running job holds; `shutdown` stops only what was started here."""

    cfg: RunConfig
    samples: list[Sample]
    sampler: PromptSampler
    skips: SkipLog
    inputs: LearnerInputs
    rollout: Any
    rewards: Any
    learner: Any
    sink: MetricsSink
    timer: PhaseTimer = field(default_factory=PhaseTimer)
    placement: Placement | None = None
    started_ray: bool = False
    weights_version: int = 0
    gate: Gate = field(default_factory=NoGate)
    sampler_state: dict[str, Any] | None = None  # as of the last trained step (see driver.py)
    gate_state: dict[str, Any] | None = None  # likewise

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


def build_run(cfg: RunConfig, model_path: str | None = None) -> Run:
    """Start every actor the config asks for (model_path overrides cfg.model_path)."""
    path = model_path or cfg.model_path
    if path is None or cfg.data.train_path is None:
        raise ValueError("a run needs model_path and data.train_path")
    skips = SkipLog(cfg.data.max_skipped_fraction)
    samples = load_samples(cfg.data.train_path, cfg.data, skips)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    started = init_ray(cfg)
    placement = scheduling_strategies(cfg)
    try:
        rollout, learner, rewards = start_actors(cfg, path, placement)
    except BaseException:
        placement.remove()
        if started:
            import ray

            ray.shutdown()
        raise
    inputs = LearnerInputs(
        path, cfg.video, cfg.prompt, cfg.rollout.min_pixels_per_frame, cfg.rollout.max_pixels_per_frame
    )
    sink = MetricsSink(
        cfg.run_dir,
        cfg.trainer.tensorboard,
        cfg.trainer.wandb_project,
        cfg.run_name,
        cfg.model_dump(mode="json"),
    )
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
        inputs,
        rollout,
        rewards,
        learner,
        sink,
        gate=build_gate(cfg.gate),
        placement=placement,
        started_ray=started,
    )


def start_actors(cfg: RunConfig, path: str, placement: Placement) -> tuple[Any, Any, Any]:
    """The rollout pool, the learner group and the reward pool; on failure, none is left running."""
    from vidrl.learner.group import LearnerGroup
    from vidrl.rollout.pool import RolloutPool

    rollout_cfg = placed_rollout_config(cfg)
    if cfg.learner.lora is not None:  # the engines take the adapters the learner trains
        rollout_cfg = rollout_cfg.model_copy(update={"lora_rank": cfg.learner.lora.rank})

    def learner_group() -> Any:
        return LearnerGroup(
            path,
            cfg.learner,
            seed=cfg.seed,
            scheduling=placement.learner,
            temperature=cfg.rollout.temperature,
            export_dtype=cfg.rollout.dtype,
        )

    started: list[Any] = []
    try:
        if rollout_cfg.sleep_mode:
            # Shared GPUs: the engines start and sleep first, then the learner loads into the
            # memory they freed (vLLM refuses to start unless gpu_memory_fraction of it is free).
            rollout = RolloutPool(rollout_cfg, path, scheduling=placement.rollout)
            started.append(rollout)
            rollout.sleep()
            learner = learner_group()
            started.append(learner)
        else:
            # The engines and the learner ranks start at the same time (each takes seconds of imports).
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="start-rollout") as starter:
                starting = starter.submit(RolloutPool, rollout_cfg, path, scheduling=placement.rollout)
                starting.add_done_callback(lambda f: f.exception() is None and started.append(f.result()))
                learner = learner_group()
                started.append(learner)
            rollout = starting.result()
        rewards = reward_pool(cfg)
    except BaseException:
        for part in started:  # leaving the executor waited for the pool: it is here if it started
            part.shutdown()
        raise
    return rollout, learner, rewards
