"""Ulysses sequence parallelism (vidrl.learner.sequence_parallel): the configs it refuses, the
plans its ranks share, and, on two real gloo ranks per family, log-probs, entropies, loss and
every parameter's gradient equal to one rank's. The whole learner (FSDP2, KL, two updates per
step, plain and two_pass) is compared in tests/test_learner_ray.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from vidrl.learner.batch import update_plans
from vidrl.learner.config import LearnerConfig
from vidrl.learner.sequence_parallel import padded_width, refuse_family
from vidrl.learner.types import TrainGroup

RANKS_SCRIPT = Path(__file__).with_name("sequence_parallel_ranks.py")


def test_a_size_that_does_not_divide_the_ranks_is_refused() -> None:
    with pytest.raises(ValidationError, match="sequence_parallel_size 2 must divide num_ranks 3"):
        LearnerConfig(num_ranks=3, sequence_parallel_size=2)
    assert LearnerConfig(num_ranks=4, sequence_parallel_size=2).data_parallel_size == 2


@pytest.mark.parametrize("attention", ["mask", "flex"])
def test_layouts_that_cannot_split_are_refused(attention: str) -> None:
    with pytest.raises(ValidationError, match="prefix_attention: two_pass"):
        LearnerConfig(num_ranks=2, sequence_parallel_size=2, prefix_attention=attention)
    LearnerConfig(num_ranks=2, sequence_parallel_size=2, shared_prefix=False, prefix_attention=attention)


def test_a_family_with_recurrent_layers_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="qwen3_5 family has recurrent"):
        refuse_family("qwen3_5", "state", 2)
    refuse_family("qwen3_5", "state", 1)
    refuse_family("qwen3_vl", "attention", 2)


def test_heads_that_do_not_split_are_refused() -> None:
    from vidrl.learner.sequence_parallel import refuse_heads

    with pytest.raises(ValueError, match="must divide the model's 28 attention heads"):
        refuse_heads(28, 8)  # Qwen2.5-VL-7B at S = 8
    refuse_heads(28, 4)


def test_padded_width() -> None:
    assert [padded_width(w, 2) for w in (1, 2, 7, 8)] == [2, 2, 8, 8]
    assert padded_width(7, 4) == 8


def _group(tokens: int) -> TrainGroup:
    ids = np.ones(tokens, dtype=np.int64)
    return TrainGroup(prompt_ids=ids, responses=(ids[:2],), advantages=np.zeros(1, np.float32))


def test_the_ranks_of_a_sequence_group_share_one_plan() -> None:
    """4 ranks at S = 2: two data-parallel shares, each given to its two consecutive ranks."""
    groups = [_group(n) for n in (30, 20, 10, 5)]
    cfg = LearnerConfig(num_ranks=4, sequence_parallel_size=2)
    plans = update_plans(groups, cfg, budget=1000)
    assert len(plans) == 4
    shares = [sorted(int(g.prompt_ids.size) for b in p.microbatches for g in b) for p in plans]
    assert shares[0] == shares[1] and shares[2] == shares[3]
    assert sorted(shares[::2]) == [[5, 30], [10, 20]]  # balanced by cost over the 2 data-parallel groups


@pytest.mark.dist
@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_two_sequence_ranks_equal_one(family: str, tmp_path: Path) -> None:
    """Real video prompts (one padded in the batch, one text-only group), two ranks over gloo:
    each rank's slice through the decoder, heads exchanged by all-to-all, the head's rows
    gathered, the vision tower's frames split between the ranks. The same per-token values,
    loss, and every parameter's gradient (the two ranks' summed, as FSDP2 reduces them), vision
    tower and DeepStack mergers included, as one rank."""
    from vidrl.data.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "model", seed=0, init_std=0.1, family=family)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, str(RANKS_SCRIPT), str(model), str(out), str(port)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert sorted(report) == ["plain", "two_pass", "vision_split"]
    split = report.pop("vision_split")  # the tower alone: split by frames, gathered = whole
    assert split["rows"] > 0 and split["embeddings"] <= 1e-5 and split["deepstack"] <= 1e-5, split
    for layout, errors in report.items():
        assert errors["missing_grads"] == 0, layout
        assert errors["grad_scale"] > 1e-3, layout  # the loss reaches the weights
        assert errors["loss"] <= 1e-5 and errors["logprobs"] <= 1e-5 and errors["entropies"] <= 1e-5, errors
        # the tower's work was split: each rank encoded a share of the frames, together all of them
        assert sum(errors["tower_rows_per_rank"]) == errors["tower_rows"], errors
        assert max(errors["tower_rows_per_rank"]) < errors["tower_rows"], errors
        assert errors["grads"] <= 1e-5, f"{layout}: gradients differ by {errors['grads']:.1e} (relative)"


def test_frame_shares_split_videos_along_time_by_rows() -> None:
    """Two videos of 2 x (4 x 4) and 3 x (2 x 4) patches: temporal patches of 16 and 8 rows, 56 in
    all; the boundary nearest 28 rows falls after the first video (32 | 24)."""
    from vidrl.learner.sequence_parallel import frame_shares

    shares = frame_shares(torch.tensor([[2, 4, 4], [3, 2, 4]]), 2)
    assert shares is not None
    (rows_0, grid_0), (rows_1, grid_1) = shares
    assert rows_0.tolist() == list(range(32)) and grid_0.tolist() == [[2, 4, 4]]
    assert rows_1.tolist() == list(range(32, 56)) and grid_1.tolist() == [[3, 2, 4]]
    # one video cut in the middle of its time axis: 4 temporal patches of 4 rows, 2 each
    (rows_0, grid_0), (rows_1, grid_1) = frame_shares(torch.tensor([[4, 2, 2]]), 2)  # type: ignore[misc]
    assert rows_0.tolist() == list(range(8)) and grid_0.tolist() == [[2, 2, 2]]
    assert rows_1.tolist() == list(range(8, 16)) and grid_1.tolist() == [[2, 2, 2]]
    # three ranks over 4 equal patches: every rank gets one at least
    sizes = [len(rows) for rows, _ in frame_shares(torch.tensor([[4, 2, 2]]), 3)]  # type: ignore[union-attr]
    assert sum(sizes) == 16 and min(sizes) >= 4
    assert frame_shares(torch.tensor([[1, 2, 2]]), 2) is None  # fewer patches than ranks: no split


def test_pixel_share_copies_this_ranks_rows_only() -> None:
    """The shares of test_frame_shares_split_videos_along_time_by_rows, read from the videos'
    own pixel arrays (rows numbered by value) without concatenating them first."""
    from vidrl.learner.sequence_parallel import SequenceGroup, pixel_share

    videos = [torch.arange(32.0)[:, None], torch.arange(32.0, 56.0)[:, None]]
    grid = torch.tensor([[2, 4, 4], [3, 2, 4]])
    firsts = [pixel_share(videos, grid, SequenceGroup(None, index, 2))[:, 0].tolist() for index in (0, 1)]
    assert firsts == [list(range(32)), [float(r) for r in range(32, 56)]]
    # a share inside one video, and one across the boundary of two
    one = [torch.arange(16.0)[:, None]]
    assert pixel_share(one, torch.tensor([[4, 2, 2]]), SequenceGroup(None, 1, 2))[:, 0].tolist() == list(
        range(8, 16)
    )
    three = pixel_share(videos, grid, SequenceGroup(None, 1, 3))[:, 0].tolist()
    assert three == list(range(int(three[0]), int(three[-1]) + 1)) and three[0] < 32 < three[-1]
