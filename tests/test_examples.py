"""The example run configs: every one validates, and the GPU-cluster ones say what their
reference recipes (Temporal-R1, VideoChat-R1) say, with sizes that add up.

The data configs under examples/data point at /data, which does not exist here: they are
read for real against a small /data tree built under tmp_path (the same relative layout,
fake video files, one record per format), so each entry yields the task it is meant for.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from vidrl.cluster.config import RunConfig, load_run_config
from vidrl.cluster.resources import PIN, bundles
from vidrl.data.config import DataConfig
from vidrl.data.readers import apply_strategy, load_samples
from vidrl.overrides import read_yaml_mapping

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
RUN_CONFIGS = sorted(EXAMPLES.glob("*.yaml"))
DATA_CONFIGS = sorted((EXAMPLES / "data").glob("*.yaml"))
TVG_3B = "qwen2_5_vl_3b_tvg.yaml"
MULTITASK_7B = "qwen2_5_vl_7b_multitask.yaml"
CLUSTER_EXAMPLES = (TVG_3B, MULTITASK_7B)


def load(name: str) -> RunConfig:
    return load_run_config(EXAMPLES / name)


def total_gpus(cfg: RunConfig) -> float:
    return (
        cfg.rollout.num_workers * cfg.rollout.gpus_per_worker
        + cfg.learner.num_ranks * cfg.learner.gpus_per_rank
    )


def weights_per_task(cfg: RunConfig, task: str) -> dict[str, float]:
    """{component name: weight} of the reward components that score `task`."""
    scoring = [c for c in cfg.rewards.resolved_components() if c.tasks is None or task in c.tasks]
    return {c.name: c.weight for c in scoring}


def test_the_cluster_examples_and_their_data_configs_are_there() -> None:
    assert set(CLUSTER_EXAMPLES) <= {p.name for p in RUN_CONFIGS}
    wanted = {"charades_sta_temporal_r1.yaml", "charades_sta_test.yaml", "videochat_r1_mix.yaml"}
    assert wanted <= {p.name for p in DATA_CONFIGS}


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_every_example_validates(path: Path) -> None:
    cfg = load_run_config(path)
    assert isinstance(cfg, RunConfig)
    # Data configs the example names inside the repository must exist (the data need not).
    for data_path in (cfg.data.train_path, cfg.data.eval_path):
        if data_path is not None and data_path.startswith("examples/"):
            assert (REPO / data_path).is_file(), data_path


@pytest.mark.parametrize("name", CLUSTER_EXAMPLES)
def test_cluster_examples_run_on_a_cluster_with_local_paths(name: str) -> None:
    cfg = load(name)
    assert cfg.run_name == Path(name).stem
    assert cfg.cluster.address == "auto"  # joins the cluster it is submitted to
    assert cfg.model_path is not None and cfg.model_path.startswith("/models/")
    assert cfg.output_dir == "/runs"


@pytest.mark.parametrize("name", CLUSTER_EXAMPLES)
def test_visual_budget_and_processor_bounds_agree(name: str) -> None:
    cfg = load(name)
    # 1,605,632 pixels / (28 x 28 pixels per visual token) = 2,048 tokens per clip.
    assert cfg.video.max_total_pixels // (28 * 28) == 2048
    # The processor must keep the frame sizes vidrl chose (else it rescales them).
    assert cfg.rollout.min_pixels_per_frame == cfg.video.min_pixels_per_frame == 3136
    assert cfg.rollout.max_pixels_per_frame == cfg.video.max_pixels_per_frame == 200704
    # 2,048 visual tokens + the longest response must fit in one sequence: 3B 2048 + 2048
    # = 4096 <= 6144; 7B 2048 + 1024 = 3072 <= 9216 (the rest is room for the text).
    assert 2048 + cfg.rollout.max_response_tokens <= cfg.rollout.max_model_len


@pytest.mark.parametrize("name", CLUSTER_EXAMPLES)
def test_tvg_prompt_asks_for_the_form_the_reward_parses(name: str) -> None:
    cfg = load(name)
    iou = [c for c in cfg.rewards.resolved_components() if c.fn == "tvg_iou"]
    assert len(iou) == 1
    assert iou[0].kwargs["style"] == cfg.prompt.tvg_answer_style


def test_3b_tvg_is_temporal_r1s_recipe() -> None:
    cfg = load(TVG_3B)
    r, lr, loss = cfg.rollout, cfg.learner, cfg.learner.loss
    assert (r.samples_per_prompt, r.temperature, r.max_response_tokens) == (8, 1.0, 2048)
    assert cfg.trainer.prompts_per_step == 16  # rollout batch of 16 prompts
    assert (lr.lr, lr.weight_decay) == (1e-6, 1e-2)
    assert (loss.kl_estimator, loss.kl_coef, loss.entropy_coef) == ("k3", 1e-2, 1e-3)
    assert (loss.clip_low, loss.clip_high, loss.dual_clip) == (0.2, 0.28, 3.0)
    assert loss.loss_agg == "token-mean"
    assert (cfg.video.fps, cfg.video.max_frames) == (2.0, 768)
    assert (r.dtype, lr.param_dtype, lr.gradient_checkpointing) == ("bfloat16", "bfloat16", True)
    # Temporal-R1's dual reward on grounding: 0.5 * format + 0.5 * IoU.
    assert weights_per_task(cfg, "tvg") == {"format": 0.5, "tvg_iou": 0.5}
    assert cfg.data.train_path == "examples/data/charades_sta_temporal_r1.yaml"


def test_3b_tvg_fills_one_node_of_8_gpus() -> None:
    cfg = load(TVG_3B)
    # 4 rollout workers x 1 GPU + 4 learner ranks x 1 GPU = 8 GPUs.
    assert total_gpus(cfg) == 8
    specs, rollout, learner = bundles(cfg)
    assert [specs[i] for i in rollout] == [{"CPU": 4.0, "GPU": 1.0}] * 4
    assert [specs[i] for i in learner] == [{"CPU": 4.0, "GPU": 1.0}] * 4


def test_7b_multitask_scores_each_task_with_its_own_rewards() -> None:
    cfg = load(MULTITASK_7B)
    assert cfg.rewards.preset == "videochat_r1"
    # VideoChat-R1 sums its rewards unweighted: every weight is 1.
    assert weights_per_task(cfg, "tvg") == {"format": 1.0, "tvg_iou": 1.0}
    assert weights_per_task(cfg, "mcq") == {"format": 1.0, "mcq_accuracy": 1.0}
    assert weights_per_task(cfg, "gqa") == {"format": 1.0, "gqa_accuracy": 1.0, "gqa_iou": 1.0}
    assert weights_per_task(cfg, "track") == {"format": 1.0, "track_iou": 1.0}
    assert cfg.learner.loss.advantage_eps == 1e-4  # (r - mean) / (std + 1e-4)
    assert cfg.rollout.samples_per_prompt == 8


def test_7b_multitask_pins_rollout_and_learner_to_two_8_gpu_nodes() -> None:
    cfg = load(MULTITASK_7B)
    # 8 rollout workers x 1 GPU on the rollout node + 8 learner ranks x 1 GPU on the
    # learner node = 16 GPUs, 8 per node.
    assert total_gpus(cfg) == 16
    specs, rollout, learner = bundles(cfg)
    assert [specs[i] for i in rollout] == [{"CPU": 4.0, "GPU": 1.0, "rollout_node": PIN}] * 8
    assert [specs[i] for i in learner] == [{"CPU": 4.0, "GPU": 1.0, "learner_node": PIN}] * 8


@pytest.mark.parametrize("path", DATA_CONFIGS, ids=lambda p: p.name)
def test_data_configs_are_well_formed(path: Path) -> None:
    entries = read_yaml_mapping(path)["datasets"]
    assert entries
    for entry in entries:
        assert str(entry["json_path"]).startswith("/data/")  # the mounted data root
        # A malformed strategy raises DataError; an empty dataset keeps nothing.
        assert apply_strategy([], entry["sampling_strategy"], random.Random(0), str(path)) == []


def fake_data_root(root: Path) -> None:
    """One record per format, at the paths the data configs name below /data."""

    def video(rel: str) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"\x00" * 16)  # readers only check size; nothing decodes

    def write(rel: str, data: Any) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(data), encoding="utf-8")

    entry = {"duration": 30.0, "timestamps": [[2.0, 8.5]], "sentences": ["a person sits"]}
    charades = {"vid1": entry}
    write("charades/charades_sta_train.json", charades)
    write("charades/charades_sta_test.json", charades)
    video("charades/videos/vid1.mp4")
    tvg = '{"start_time": "2.0", "end_time": "8.5"}'
    write(
        "temporal_r1/charades_train.json",
        [
            {
                "dataset": "charades",
                "video": "vid1.mp4",
                "problem": "a person sits",
                "solution": f"<answer>{tvg}</answer>",
                "video_length": 30.0,
            }
        ],
    )
    write(
        "videoqa/mcq_train.json",
        [
            {
                "video": "q1.mp4",
                "problem": "Who?\n(A) a cat\n(B) a dog",
                "solution": "(B)",
                "video_length": 12.0,
            }
        ],
    )
    video("videoqa/videos/q1.mp4")
    write(
        "nextgqa/nextgqa_train.json",
        [
            {
                "video": "g1.mp4",
                "question": "Why?",
                "options": ["x", "y", "z"],
                "answer": "(C)",
                "glue": [[1.0, 3.0]],
                "duration": 20.0,
            }
        ],
    )
    video("nextgqa/videos/g1.mp4")
    video("got10k/videos/t1.mp4")
    track = {
        "id": "t1",
        "task": "track",
        "video": str(root / "got10k/videos/t1.mp4"),
        "question": "Track the car.",
        "duration": 5.0,
        "boxes": [[0.1, 0.1, 0.4, 0.5], [0.2, 0.1, 0.5, 0.5]],
    }
    (root / "got10k/got10k_track.jsonl").write_text(json.dumps(track) + "\n", encoding="utf-8")


def relocated(path: Path, root: Path, out: Path) -> Path:
    """The data config with /data replaced by `root` (it names absolute paths)."""
    text = path.read_text(encoding="utf-8").replace("/data/", f"{root}/")
    out.write_text(text, encoding="utf-8")
    return out


@pytest.mark.parametrize(
    ("name", "tasks"),
    [
        ("charades_sta_temporal_r1.yaml", ["tvg"]),
        ("charades_sta_test.yaml", ["tvg"]),
        ("videochat_r1_mix.yaml", ["tvg", "mcq", "gqa", "track"]),
    ],
)
def test_data_entries_read_as_their_tasks(tmp_path: Path, name: str, tasks: list[str]) -> None:
    root = tmp_path / "data"
    fake_data_root(root)
    config = relocated(EXAMPLES / "data" / name, root, tmp_path / name)
    samples = load_samples(config, DataConfig(max_skipped_fraction=0.0))
    assert [s.task for s in samples] == tasks
    # Every video the samples name is one of the files made above.
    assert all(Path(s.video).is_file() and str(s.video).startswith(str(root)) for s in samples)


def test_synthetic_example_is_what_the_demo_trains() -> None:
    from vidrl.cluster.config import load_run_config
    from vidrl.demo import DEMO_OVERRIDES

    from_file = load_run_config(EXAMPLES / "synthetic.yaml").model_dump()
    from_demo = load_run_config(None, list(DEMO_OVERRIDES)).model_dump()
    for part in ("prompt", "rewards", "video", "rollout", "learner", "cluster", "trainer"):
        assert from_file[part] == from_demo[part], part
