"""Meta-device loading (vidrl.learner.loading): each rank reads only its rows of the checkpoint,
and the weights and buffers after loading are exactly those of `from_pretrained`.

One process here (a gloo group of one, so FSDP2 shards everything as one rank would); the two-rank
case is in tests/test_learner_ray.py (exported weights before any step equal from_pretrained's).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText

from vidrl.data.tiny import build_tiny_model
from vidrl.learner.config import LearnerConfig
from vidrl.learner.loading import build_on_meta, checkpoint_names, load_shards, local_rows, materialise
from vidrl.learner.model import shard_model

pytestmark = pytest.mark.usefixtures("process_group")  # FSDP2 shards as one rank of a group


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("loading") / "tiny", seed=3)


def load_sharded(path: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    model = build_on_meta(str(path), "sdpa", dtype)
    names = checkpoint_names(model, str(path))
    shard_model(model, LearnerConfig())
    materialise(model, torch.device("cpu"))
    load_shards(model, str(path), names)
    return model


def assert_same_as_from_pretrained(
    model: torch.nn.Module, path: Path, dtype: torch.dtype = torch.float32
) -> None:
    reference = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
    expected = dict(reference.named_parameters())
    got = {name: p.full_tensor() for name, p in model.named_parameters()}
    assert got.keys() == expected.keys()
    for name, tensor in got.items():
        assert tensor.dtype == dtype and torch.equal(tensor, expected[name]), name
    buffers = dict(reference.named_buffers())
    for name, buffer in model.named_buffers():  # the rotary frequencies, rebuilt after the meta build
        assert torch.equal(buffer, buffers[name]), name


def test_weights_and_buffers_equal_from_pretrained(model_dir: Path) -> None:
    # save_pretrained writes the hub's key layout (model.layers.*, visual.*): renamed on load
    keys = load_file(model_dir / "model.safetensors").keys()
    assert any(k.startswith("model.layers.") for k in keys)
    assert_same_as_from_pretrained(load_sharded(model_dir), model_dir)


def test_tied_embeddings_load_once_for_both_ends(tmp_path: Path) -> None:
    """Qwen2.5-VL-3B ties the output head to the input embedding: one tensor in the checkpoint."""
    from vidrl.data.tiny import TinyQwenShape

    tied = build_tiny_model(tmp_path / "tied", seed=1, shape=TinyQwenShape(tie_word_embeddings=True))
    model = load_sharded(tied)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert_same_as_from_pretrained(model, tied)


def test_module_tree_names_index_files_and_bf16_checkpoints(model_dir: Path, tmp_path: Path) -> None:
    """A checkpoint under the module tree's own names, split over two files with an index, in bf16."""
    import shutil

    folder = tmp_path / "split"
    shutil.copytree(model_dir, folder)
    (folder / "model.safetensors").unlink()
    state = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.bfloat16).state_dict()
    names = sorted(state)
    halves = {"part-1.safetensors": names[::2], "part-2.safetensors": names[1::2]}
    for file, keys in halves.items():
        save_file({k: state[k].contiguous() for k in keys}, str(folder / file))
    weight_map = {k: file for file, keys in halves.items() for k in keys}
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_same_as_from_pretrained(load_sharded(folder), folder)
    assert_same_as_from_pretrained(load_sharded(folder, torch.bfloat16), folder, torch.bfloat16)


def test_a_missing_tensor_is_named(model_dir: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(model_dir, folder)
    state = load_file(folder / "model.safetensors")
    del state["lm_head.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"lm_head\.weight"):
        load_sharded(folder)


def test_rows_follow_fsdp2_chunks() -> None:
    """torch.chunk's rule: ceil(n / W) rows per rank; a plain tensor is read whole."""
    assert local_rows(torch.nn.Parameter(torch.zeros(5, 2))) == (0, 5)
    assert local_rows(torch.nn.Parameter(torch.zeros(()))) == (0, 1)
