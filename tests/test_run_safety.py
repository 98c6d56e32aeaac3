"""The run directory's safety, file by file (no Ray): checkpoints written whole or not at all,
pruned, checked before a load; metrics that survive a torn line; the run's identity."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from safetensors.torch import save_file

from vidrl.cluster import checkpoints, identity
from vidrl.cluster.config import load_run_config
from vidrl.cluster.job import trim_metrics, write_config


def fake_checkpoint(folder: Path) -> None:
    """The files a learner save writes, small."""
    import torch

    (folder / "state").mkdir()
    save_file({"model.w": torch.ones(4)}, str(folder / "state" / "shard-00001.safetensors"))
    (folder / "trainer_state.json").write_text(json.dumps({"step": 1, "extra": {}}))


def test_a_save_cut_short_leaves_no_checkpoint_and_is_removed_at_the_next_start(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    checkpoints.write(checkpoints.step_dir(root, 1), fake_checkpoint)

    def dies_half_way(folder: Path) -> None:
        fake_checkpoint(folder)
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space"):
        checkpoints.write(checkpoints.step_dir(root, 2), dies_half_way)
    assert [p.name for p in checkpoints.complete(root)] == ["step_000001"]
    assert (root / ".step_000002.partial").exists()
    assert checkpoints.remove_partial(root) == [root / ".step_000002.partial"]
    assert sorted(p.name for p in root.iterdir()) == ["step_000001"]


def test_a_checkpoint_set_aside_comes_back_when_its_replacement_never_arrived(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    first = checkpoints.write(checkpoints.step_dir(root, 1), fake_checkpoint)
    first.rename(root / ".step_000001.replaced")  # as `write` leaves it when killed mid-replace
    checkpoints.remove_partial(root)
    assert checkpoints.complete(root) == [first]


def test_only_the_newest_checkpoints_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for step in range(1, 5):
        checkpoints.write(checkpoints.step_dir(root, step), fake_checkpoint)
    assert [p.name for p in checkpoints.prune(root, keep=2)] == ["step_000001", "step_000002"]
    assert [p.name for p in checkpoints.complete(root)] == ["step_000003", "step_000004"]
    assert checkpoints.prune(root, keep=0) == []  # 0 keeps all


def test_damaged_files_are_found_before_a_load(tmp_path: Path) -> None:
    folder = checkpoints.write(tmp_path / "step_000001", fake_checkpoint)
    assert checkpoints.problems(folder) == []
    shard = folder / "state" / "shard-00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-3])  # truncated: a kill mid-write on a file system without fsync
    (problem,) = checkpoints.problems(folder)
    assert problem.startswith("state/shard-00001.safetensors: ") and f"its header says {len(data)}" in problem
    shard.write_bytes(struct.pack("<Q", 10**6) + b"{")
    (folder / "trainer_state.json").write_text('{"step": ')
    found = checkpoints.problems(folder)
    assert len(found) == 2 and found[0].startswith("trainer_state.json")


def test_a_torn_metrics_line_is_dropped_and_later_steps_trimmed(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": s, "loss": 0.5}) + "\n" for s in range(4)]
    path.write_text("".join(rows) + '{"step": 4, "lo')  # killed mid-write
    trim_metrics(path, 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 2]
    assert not list(tmp_path.glob(".*.tmp"))  # written beside and renamed over, never in place


def test_a_rerun_with_another_learning_rate_is_refused_naming_the_key(tmp_path: Path) -> None:
    old = load_run_config(None, [f"output_dir={tmp_path}"])
    saved = identity.config_tree(old)
    changed = load_run_config(None, [f"output_dir={tmp_path}", "learner.lr=2e-6", "trainer.steps=40"])
    with pytest.raises(identity.ConfigChanged) as refused:
        identity.check_resume(saved, changed, tmp_path / "step_000005", anyway=False)
    message = str(refused.value)
    assert "learner.lr: 1e-06 -> 2e-06" in message and "trainer.steps" not in message  # steps may change
    assert "run_name=" in message and "--resume-anyway" in message
    assert identity.check_resume(saved, changed, tmp_path, anyway=True) == ["learner.lr: 1e-06 -> 2e-06"]
    # What changes where and how a run is watched or placed never stops a resume.
    moved = load_run_config(
        None, ["output_dir=/elsewhere", "cluster.local_num_cpus=4", "learner.num_ranks=4"]
    )
    assert identity.check_resume(saved, moved, tmp_path, anyway=False) == []


def test_the_warm_start_is_reused_only_for_its_own_model_and_data(tmp_path: Path) -> None:
    cfg = load_run_config(None, ["model_path=/models/a", "trainer.sft_steps=10"])
    saved = identity.config_tree(cfg)
    assert identity.same_warm_start(
        saved, load_run_config(None, ["model_path=/models/a", "trainer.sft_steps=10", "learner.lr=1e-3"])
    )
    assert not identity.same_warm_start(
        saved, load_run_config(None, ["model_path=/models/b", "trainer.sft_steps=10"])
    )
    assert not identity.same_warm_start(None, cfg)


def model_folder(folder: Path, value: float) -> Path:
    """A model folder as vidrl reads it: config.json and one weight file."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    save_file({"model.w": torch.full((4,), value)}, str(folder / "model.safetensors"))
    return folder


def test_a_rerun_on_another_model_in_the_same_folder_is_refused(tmp_path: Path) -> None:
    model = model_folder(tmp_path / "model", 1.0)
    cfg = load_run_config(None, [f"output_dir={tmp_path}", f"model_path={model}", "trainer.sft_steps=10"])
    checkpoint = tmp_path / "step_000005"
    checkpoint.mkdir()
    write_config(cfg, checkpoint)
    saved = identity.saved_tree(checkpoint)
    assert saved is not None and saved[identity.MODEL_FILES].startswith("sha256:")
    # The same files written again (a deterministic rebuild) are the same model.
    model_folder(model, 1.0)
    assert identity.check_resume(saved, cfg, checkpoint, anyway=False) == []
    assert identity.same_warm_start(saved, cfg)
    model_folder(model, 2.0)  # same names, same sizes, other weights
    with pytest.raises(identity.ConfigChanged) as refused:
        identity.check_resume(saved, cfg, checkpoint, anyway=False)
    assert f"model_files: the model folder {model} holds other files" in str(refused.value)
    assert [line.split(":")[0] for line in identity.check_resume(saved, cfg, checkpoint, anyway=True)] == [
        identity.MODEL_FILES
    ]
    assert not identity.same_warm_start(saved, cfg)
    # A folder written before fingerprints (no model.json) is compared on its config alone.
    (checkpoint / identity.MODEL).unlink()
    older = identity.saved_tree(checkpoint)
    assert older is not None and identity.check_resume(older, cfg, checkpoint, anyway=False) == []


def test_the_fingerprint_reads_config_and_weights_only(tmp_path: Path) -> None:
    model = model_folder(tmp_path / "m", 1.0)
    first = identity.model_fingerprint(str(model))
    (model / "tokenizer.json").write_text("{}")  # tokenizer files are not weights
    assert identity.model_fingerprint(str(model)) == first
    (model / "config.json").write_text(json.dumps({"model_type": "qwen3_vl"}))
    assert identity.model_fingerprint(str(model)) != first
    assert identity.model_fingerprint("Qwen/Qwen2.5-VL-3B-Instruct") is None  # not a folder
    assert identity.model_fingerprint(None) is None


def test_each_start_is_recorded(tmp_path: Path) -> None:
    cfg = load_run_config(None, [f"output_dir={tmp_path}", "run_name=r"])
    identity.record_start(cfg, None, [])
    identity.record_start(cfg, tmp_path / "step_000002", ["learner.lr: 1e-06 -> 2e-06"])
    entries = [json.loads(line) for line in (cfg.run_dir / identity.HISTORY).read_text().splitlines()]
    assert [e["resumed_from"] for e in entries] == [None, "step_000002"]
    assert entries[1]["accepted_changes"] == ["learner.lr: 1e-06 -> 2e-06"]
    assert entries[0]["config"]["learner"]["lr"] == 1e-6
