"""A run directory is the run's identity: a rerun resumes it only with the config it trained on.

Each checkpoint holds the effective config it was trained with (`config.yaml`), and so does the
SFT warm start. Before any actor is built, a start into a run directory with checkpoints
compares its config with the newest checkpoint's: any difference outside `MAY_CHANGE` (what
changes how a run is watched, kept or placed, never what it trains) stops the start with each
key as old -> new and the two ways out. Every start appends the config it ran with, and the
differences it accepted, to `history.jsonl`.

The same `model_path` can hold another model by the time of a rerun (a folder rebuilt, another
revision downloaded into it), so beside each config.yaml lies `model.json`, a fingerprint of the
model folder's files (`MODEL_FILES`), compared like a config key.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from vidrl.cluster.config import RunConfig

HISTORY = "history.jsonl"
CONFIG = "config.yaml"
MODEL = "model.json"
MODEL_FILES = "model_files"
"""The key under which a saved or wanted tree holds the model folder's fingerprint."""
FINGERPRINT_EDGE_BYTES = 1 << 16
"""Bytes read from each end of each weight file: enough to tell two checkpoints apart (the header
names every tensor and its offsets; the first and last rows of the weights follow), and cheap for
a 7B model's 15 GB."""

MAY_CHANGE: dict[str, str] = {
    "trainer.steps": "a run is extended or cut short by changing it",
    "trainer.checkpoint_every_steps": "how often the run is kept, not what it trains",
    "trainer.keep_checkpoints": "how much of the run is kept",
    "trainer.eval_every_steps": "evaluation reads the policy, never changes it",
    "trainer.eval_max_samples": "evaluation only",
    "trainer.tensorboard": "logging only",
    "trainer.wandb_project": "logging only",
    "trainer.progress_bar": "display only",
    "trainer.max_consecutive_skips": "when a failing run stops, not what a good step does",
    "data.eval_path": "evaluation only",
    "output_dir": "where the run directory lies (a moved run)",
    "cluster": "where actors run: the address, the placement, node pins, reward actors",
    "video.cache_dir": "where decoded frames are cached, not which frames",
    "video.decode_threads": "how fast frames are decoded, not which",
    "rollout.num_workers": "how many engines share the prompts (each prompt keeps its own seed)",
    "rollout.cpus_per_worker": "resources",
    "rollout.gpus_per_worker": "resources",
    "rollout.kv_cache_bytes": "the engine's cache size",
    "rollout.gpu_memory_fraction": "the engine's memory share",
    "rollout.enforce_eager": "how the engine runs, not what it samples",
    "rollout.sleep_mode": "how the engine shares a GPU",
    "learner.num_ranks": "the checkpoint reshards to any number of ranks",
    "learner.cpus_per_rank": "resources",
    "learner.gpus_per_rank": "resources",
    "learner.reference_offload": "where the reference model waits between uses",
    "learner.weight_bucket_bytes": "how weights travel, not what they are",
    "learner.max_tokens_per_microbatch": "the loss is normalised by the whole step's counts",
    "learner.logprob_chunk_tokens": "memory of the log-prob head, not its values",
    "learner.host_malloc": "how freed host memory is returned",
    "learner.attention": "the kernel, not the math",
}
"""Keys (or whole sections) that may differ between a run's checkpoint and a rerun, and why."""

SFT_KEYS = (
    "model_path",
    MODEL_FILES,
    "seed",
    "data",
    "video",
    "prompt",
    "trainer.sft_steps",
    "trainer.sft_lr",
)
"""What decides the SFT warm start (besides the learner's model settings, `SFT_LEARNER_KEYS`)."""
SFT_LEARNER_KEYS = ("learner.lora", "learner.param_dtype", "learner.gradient_checkpointing")


class ConfigChanged(ValueError):
    """A start whose config differs from the run directory's in what it trains."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a nested mapping."""
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from flatten(value, f"{name}.")
        else:
            yield name, value


def may_change(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in MAY_CHANGE)


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, old, new) for every leaf that differs, outside MAY_CHANGE."""
    before, after = dict(flatten(old)), dict(flatten(new))
    keys = sorted(before.keys() | after.keys())
    changed = [k for k in keys if before.get(k) != after.get(k) and not may_change(k)]
    return [(k, before.get(k), after.get(k)) for k in changed]


def config_tree(cfg: RunConfig) -> dict[str, Any]:
    """The config as plain data, as config.yaml holds it."""
    return cfg.model_dump(mode="json")


def model_fingerprint(model_path: str | None) -> str | None:
    """A digest of a local model folder: config.json whole, and each weight file's name, size and
    first and last FINGERPRINT_EDGE_BYTES. None for anything but a folder."""
    folder = Path(model_path) if model_path else None
    if folder is None or not folder.is_dir():
        return None
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    weights = sorted(f for pattern in ("*.safetensors", "*.bin") for f in folder.glob(pattern))
    for file in weights:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(FINGERPRINT_EDGE_BYTES))
            handle.seek(max(size - FINGERPRINT_EDGE_BYTES, 0))
            digest.update(handle.read(FINGERPRINT_EDGE_BYTES))
    return f"sha256:{digest.hexdigest()[:16]} ({len(weights)} weight files)"


def wanted_tree(cfg: RunConfig) -> dict[str, Any]:
    """What a start asks for: its config, and the fingerprint of the model it names."""
    return config_tree(cfg) | {MODEL_FILES: model_fingerprint(cfg.model_path)}


def model_json(cfg: RunConfig) -> str:
    """model.json's text: the fingerprint of the model `cfg` trains from."""
    return json.dumps({MODEL_FILES: model_fingerprint(cfg.model_path)}) + "\n"


def saved_tree(folder: Path) -> dict[str, Any] | None:
    """The config a checkpoint (or warm start) folder was trained with, with its model's
    fingerprint where one was written, or None if it holds no config."""
    file = folder / CONFIG
    if not file.exists():
        return None
    tree: dict[str, Any] = yaml.safe_load(file.read_text(encoding="utf-8"))
    model = folder / MODEL
    if model.exists():
        tree |= json.loads(model.read_text(encoding="utf-8"))
    return tree


def comparable(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both trees, without the model fingerprint unless both have one (a folder written before
    fingerprints were, or a model that is not a local folder, has nothing to compare)."""
    if saved.get(MODEL_FILES) is not None and wanted.get(MODEL_FILES) is not None:
        return dict(saved), dict(wanted)
    return (
        {k: v for k, v in saved.items() if k != MODEL_FILES},
        {k: v for k, v in wanted.items() if k != MODEL_FILES},
    )


def check_resume(saved: Mapping[str, Any], cfg: RunConfig, checkpoint: Path, anyway: bool) -> list[str]:
    """The differences between the checkpoint's config and this start's, as "key: old -> new"
    lines; raises ConfigChanged unless `anyway`."""
    changed = [
        f"{key}: {old!r} -> {new!r}" for key, old, new in differences(*comparable(saved, wanted_tree(cfg)))
    ]
    if changed and not anyway:
        if any(line.startswith(f"{MODEL_FILES}:") for line in changed):
            changed.append(
                f"({MODEL_FILES}: the model folder {cfg.model_path} holds other files than it did)"
            )
        lines = "\n  ".join(changed)
        raise ConfigChanged(
            f"{cfg.run_dir} holds a run trained with another config (its latest checkpoint, "
            f"{checkpoint.name}, differs in what is trained):\n  {lines}\n"
            f"Start a new run with another run_name (run_name=NAME), or resume this one with the new "
            f"values (--resume-anyway; the change is recorded in {cfg.run_dir / HISTORY})."
        )
    return changed


def same_warm_start(saved: Mapping[str, Any] | None, cfg: RunConfig) -> bool:
    """Whether a warm start trained with `saved` is the one `cfg` asks for."""
    if saved is None:
        return False
    keys = (*SFT_KEYS, *SFT_LEARNER_KEYS)

    def pick(tree: Mapping[str, Any]) -> dict[str, Any]:
        flat = dict(flatten(tree))
        return {k: v for k, v in flat.items() if any(k == p or k.startswith(f"{p}.") for p in keys)}

    old, new = comparable(saved, wanted_tree(cfg))
    return pick(old) == pick(new)


def record_start(cfg: RunConfig, resumed_from: Path | None, accepted: list[str]) -> None:
    """Append this start to the run's history: when, from which checkpoint, with which config,
    and the differences it accepted (--resume-anyway)."""
    entry = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "resumed_from": None if resumed_from is None else resumed_from.name,
        "accepted_changes": accepted,
        "config": config_tree(cfg),
        MODEL_FILES: model_fingerprint(cfg.model_path),
    }
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    with (cfg.run_dir / HISTORY).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
