"""vidrl.models: what each family answers, on hand-worked numbers and the tiny models (no engine).

The engine-side checks of each family are in tests/test_families.py
(the Qwen2.5-VL ones in tests/test_rollout_pool.py).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from family_cases import qwen3_prompt
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from vidrl.cli import TINY_FAMILIES, main
from vidrl.data.tiny import build_tiny_model
from vidrl.learner.config import LearnerConfig
from vidrl.learner.loading import build_on_meta, checkpoint_names, load_shards, materialise
from vidrl.learner.model import shard_model
from vidrl.models import FAMILIES, family_at, family_named, family_of
from vidrl.models.qwen3_vl import prompt_positions as qwen3_positions

VIDEO, START, END = 9, 7, 8  # token ids of the hand-worked prompts


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: build_tiny_model(root / name, seed=2, family=name) for name in FAMILIES}


def test_the_cli_offers_every_family_and_the_default_is_the_fastest() -> None:
    assert tuple(FAMILIES) == TINY_FAMILIES
    assert TINY_FAMILIES[0] == "qwen2_5_vl"
    with pytest.raises(ValueError, match="vidrl trains qwen2_5_vl, qwen3_vl, qwen3_5"):
        family_named("llava")


def test_the_family_is_read_from_the_checkpoint_config(models: dict[str, Path]) -> None:
    for name, path in models.items():
        config = AutoConfig.from_pretrained(path)
        family = family_of(config)
        assert family.name == name == config.model_type
        assert family_at(path) is family  # from config.json alone, as the pool and the ranks read it
        ids = (
            config.image_token_id,
            config.video_token_id,
            config.vision_start_token_id,
            config.vision_end_token_id,
        )
        assert family.placeholder_token_ids(config) == tuple(sorted(ids))
        tokenizer = AutoTokenizer.from_pretrained(path)
        assert tokenizer.convert_ids_to_tokens(list(ids)) == [
            "<|image_pad|>",
            "<|video_pad|>",
            "<|vision_start|>",
            "<|vision_end|>",
        ]


def test_the_default_tiny_model_is_the_qwen2_5_vl_one(models: dict[str, Path], tmp_path: Path) -> None:
    default = build_tiny_model(tmp_path / "default", seed=2)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (default / name).read_bytes() == (models["qwen2_5_vl"] / name).read_bytes()


def test_vidrl_tiny_model_builds_a_family(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tiny-model", str(tmp_path / "q35"), "--family", "qwen3_5"]) == 0
    assert "tiny qwen3_5 written" in capsys.readouterr().out
    assert AutoConfig.from_pretrained(tmp_path / "q35").model_type == "qwen3_5"


def test_video_size_bounds_a_frame_or_a_clip() -> None:
    # Qwen2-VL's video processor bounds each frame; Qwen3-VL's the clip (t x h x w).
    assert family_named("qwen2_5_vl").video_size(1024, 4096, 8) == {
        "shortest_edge": 1024,
        "longest_edge": 4096,
    }
    for name in ("qwen3_vl", "qwen3_5"):
        assert family_named(name).video_size(1024, 4096, 8) == {"shortest_edge": 8192, "longest_edge": 32768}
        assert family_named(name).resize_factor == 32
    assert family_named("qwen3_5").video_size(None, None, 8) is None


def test_qwen3_positions_by_hand() -> None:
    config = SimpleNamespace(video_token_id=VIDEO, vision_config=SimpleNamespace(spatial_merge_size=2))
    # Grid (t=2, h=4, w=2) patches: 2 temporal patches of (4 / 2) x (2 / 2) = 2 x 1 merged tokens.
    ids = torch.tensor(qwen3_prompt([2, 2], outer=True, video=VIDEO, start=START, end=END))
    positions = qwen3_positions(config, ids, torch.tensor([[2, 4, 2]]))
    # Text 0..5 (1, 2, start, t, t, start); patch 1 at 6: t = 6, h = 6 + (0, 1), w = 6; the text
    # after it continues from max + 1 = 8 (end, t, t, start = 8..11); patch 2 at 12: h 12 + (0, 1);
    # then end, end, 3, 4 from 14.
    assert positions.tolist() == [
        [0, 1, 2, 3, 4, 5, 6, 6, 8, 9, 10, 11, 12, 12, 14, 15, 16, 17],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17],
        [0, 1, 2, 3, 4, 5, 6, 6, 8, 9, 10, 11, 12, 12, 14, 15, 16, 17],
    ]
    with pytest.raises(ValueError, match="videos in the grid"):
        qwen3_positions(config, ids, torch.tensor([[4, 4, 2]]))  # 4 temporal patches, 2 runs


@pytest.mark.parametrize("name", ["qwen3_vl", "qwen3_5"])
def test_meta_device_build_equals_from_pretrained(
    models: dict[str, Path], process_group: None, name: str
) -> None:
    """The learner's loading path (meta build, FSDP2 units of the family, buffers rebuilt by the
    model's _init_weights, each rank's rows read) gives from_pretrained's weights and buffers."""
    path = str(models[name])
    model = build_on_meta(path, "sdpa", torch.float32)
    names = checkpoint_names(model, path)
    units = [m for m in model.modules() if type(m).__name__ in family_of(model.config).sharding_units]
    assert len(units) == model.config.text_config.num_hidden_layers + model.config.vision_config.depth
    shard_model(model, LearnerConfig())
    materialise(model, torch.device("cpu"))
    load_shards(model, path, names)
    reference = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    expected = dict(reference.named_parameters())
    got = {n: p.full_tensor() for n, p in model.named_parameters()}
    assert got.keys() == expected.keys() and all(torch.equal(got[n], expected[n]) for n in got)
    buffers = dict(reference.named_buffers())
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())


@pytest.mark.parametrize("name", ["qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def test_the_dummy_vision_pass_reaches_every_vision_parameter(models: dict[str, Path], name: str) -> None:
    """A rank without video must give every vision parameter a gradient, or FSDP2's
    reduce-scatter differs between ranks: Qwen3-VL's DeepStack mergers included."""
    model = AutoModelForImageTextToText.from_pretrained(models[name], dtype=torch.float32)
    family = family_named(name)
    tower = family.vision_tower(model)
    assert tower is not None
    family.dummy_vision_pass(model).backward()
    missing = [n for n, p in tower.named_parameters() if p.grad is None]
    assert missing == []
    if family_named(name).deepstack:  # the merged patches alone would leave the DeepStack mergers out
        model.zero_grad(set_to_none=True)
        merge, config = tower.config.spatial_merge_size, tower.config
        pixels = torch.zeros(
            merge * merge, config.in_channels * config.temporal_patch_size * config.patch_size**2
        )
        (tower(pixels, grid_thw=torch.tensor([[1, merge, merge]])).pooler_output.sum() * 0).backward()
        left_out = {n.split(".")[0] for n, p in tower.named_parameters() if p.grad is None}
        assert left_out == {"deepstack_merger_list"}


def test_qwen3_processors_normalise_images_and_videos_alike(models: dict[str, Path]) -> None:
    """vLLM 0.32 normalises Qwen3-VL video pixels with the IMAGE processor's mean/std
    (mm_device_do_normalize): the tiny processors must agree, as the released ones do."""
    for name in ("qwen3_vl", "qwen3_5"):
        processor: Any = AutoProcessor.from_pretrained(models[name])
        image, video = processor.image_processor, processor.video_processor
        assert list(image.image_mean) == list(video.image_mean) == [0.5] * 3
        assert list(image.image_std) == list(video.image_std) == [0.5] * 3
        assert video.patch_size == image.patch_size == 16


QWEN3_EXAMPLES = ("qwen3_vl_8b_tvg.yaml", "qwen3_5_tvg.yaml")


@pytest.mark.parametrize("name", QWEN3_EXAMPLES)
def test_qwen3_examples_size_their_video_at_32_pixels_a_token(name: str) -> None:
    from vidrl.cluster.config import load_run_config
    from vidrl.cluster.resources import bundles

    cfg = load_run_config(Path(__file__).parents[1] / "examples" / name)
    assert cfg.run_name == Path(name).stem and cfg.cluster.address == "auto" and cfg.output_dir == "/runs"
    assert cfg.model_path is not None and cfg.model_path.startswith("/models/")
    # Frames in multiples of the families' resize factor (patch 16 x merge 2) and 2,048 visual
    # tokens of 32 x 32 pixels per clip, as the Qwen2.5-VL examples give 2,048 of 28 x 28.
    assert cfg.video.pixel_multiple is None  # the model's: Qwen3-VL's and Qwen3.5's are 32
    assert family_named("qwen3_vl").resize_factor == family_named("qwen3_5").resize_factor == 32
    assert cfg.video.max_total_pixels // (32 * 32) == 2048
    assert (cfg.rollout.min_pixels_per_frame, cfg.rollout.max_pixels_per_frame) == (
        cfg.video.min_pixels_per_frame,
        cfg.video.max_pixels_per_frame,
    )
    # 2,048 visual tokens, a start/end pair and a "<t seconds>" (about 7 tokens) per frame
    # pair (at most 384 pairs), and the longest response fit in one sequence.
    assert 2048 + 384 * 9 + cfg.rollout.max_response_tokens <= cfg.rollout.max_model_len
    specs, rollout, learner = bundles(cfg)
    assert len(rollout) == len(learner) == 4 and sum(s.get("GPU", 0) for s in specs) == 8
    assert cfg.rollout.dtype == cfg.learner.param_dtype == "bfloat16"


def test_the_qwen3_5_example_keeps_the_prompt_state_layout() -> None:
    """Activation checkpointing drops the model's cache: Qwen3.5's groups would run plain."""
    from vidrl.cluster.config import load_run_config

    cfg = load_run_config(Path(__file__).parents[1] / "examples" / "qwen3_5_tvg.yaml")
    assert cfg.learner.shared_prefix and not cfg.learner.gradient_checkpointing
