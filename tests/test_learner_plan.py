"""Pure parts of the learner: splitting a step across ranks and micro-batches, the lr schedule."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from vidrl.learner.batch import micro_batches, split_across_ranks, step_totals
from vidrl.learner.config import LearnerConfig
from vidrl.learner.schedule import lr_lambda
from vidrl.learner.types import TrainGroup


def group(prompt: int, *lengths: int) -> TrainGroup:
    return TrainGroup(
        prompt_ids=np.zeros(prompt, dtype=np.int64),
        responses=tuple(np.zeros(n, dtype=np.int64) for n in lengths),
        advantages=np.zeros(len(lengths), dtype=np.float32),
    )


def test_cost_shared_vs_plain() -> None:
    g = group(1000, 128, 128, 128, 128)
    assert g.cost(shared_prefix=True) == 1000 + 4 * 128  # prompt once
    assert g.cost(shared_prefix=False) == 4 * 1000 + 4 * 128  # prompt per response


def test_step_totals_count_tokens_and_sequences() -> None:
    totals = step_totals([group(5, 3, 4), group(5, 2)])
    assert (totals.response_tokens, totals.sequences) == (9, 3)


def test_split_across_ranks_balances_cost() -> None:
    groups = [group(10, 90), group(10, 40), group(10, 40), group(10, 10)]  # costs 100, 50, 50, 20
    shares = split_across_ranks(groups, 2, shared_prefix=True)
    # largest first: 100 -> r0; 50 -> r1; 50 -> r1 (load 50 < 100); 20 -> r0 (100 vs 100, fewer groups? tie
    # on load, r1 has 2 groups, r0 has 1) -> r0
    assert shares == [[0, 3], [1, 2]]
    assert sorted(i for s in shares for i in s) == [0, 1, 2, 3]


def test_more_ranks_than_groups_leaves_empty_shares() -> None:
    assert split_across_ranks([group(4, 4)], 3, shared_prefix=True) == [[0], [], []]


def test_micro_batches_respect_budget_and_never_cut_groups() -> None:
    groups = [group(10, 10), group(10, 10), group(10, 50), group(10, 5)]  # costs 20, 20, 60, 15
    assert micro_batches(groups, max_tokens=40, shared_prefix=True) == [[0, 1], [2], [3]]
    assert micro_batches(groups, max_tokens=1000, shared_prefix=True) == [[0, 1, 2, 3]]


def test_lr_schedule_warmup_then_cosine() -> None:
    cfg = LearnerConfig(lr=1.0, warmup_steps=2, lr_schedule="cosine", total_steps=6, min_lr_ratio=0.1)
    f = lr_lambda(cfg)
    # warmup: (0+1)/2, (1+1)/2; cosine over 4 steps: progress 0, .25, .5, 1 -> 0.1 + 0.9 * (1+cos(pi p))/2
    assert [round(f(s), 4) for s in range(7)] == [0.5, 1.0, 1.0, 0.8682, 0.55, 0.2318, 0.1]
    assert lr_lambda(LearnerConfig(lr=1.0))(5) == 1.0


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        LearnerConfig(num_ranks=0)
    with pytest.raises(ValueError):
        LearnerConfig(max_tokens_per_microbatch=1)


def test_each_part_of_the_model_gets_its_own_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import torch

    from vidrl.learner import model as model_module
    from vidrl.learner.layouts import choose_layout
    from vidrl.learner.model import choose_attention as choose_for_layout
    from vidrl.models import family_named

    def choose_attention(cfg: LearnerConfig, device: torch.device) -> Any:
        return choose_for_layout(cfg, device, choose_layout(cfg, family_named("qwen2_5_vl")))

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    two_pass = choose_attention(LearnerConfig(), cpu)
    assert (two_pass.text, two_pass.vision, two_pass.prefix_kernel) == ("vidrl_shared_prefix", "sdpa", "sdpa")
    assert choose_attention(LearnerConfig(prefix_attention="mask"), cpu).text == "sdpa"
    assert choose_attention(LearnerConfig(shared_prefix=False), cpu).text == "sdpa"
    # On a GPU with flash-attn installed: flash for bf16 compute (vision tower and the varlen
    # passes), SDPA for float32 (flash-attn takes no float32), and a clear error when asked for.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        model_module.importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "flash_attn" else real_find_spec(name, *a),
    )
    bf16 = choose_attention(LearnerConfig(param_dtype="bfloat16"), gpu)
    assert (bf16.text, bf16.vision, bf16.prefix_kernel) == (
        "vidrl_shared_prefix",
        "flash_attention_2",
        "flash",
    )
    assert (
        choose_attention(LearnerConfig(param_dtype="bfloat16", shared_prefix=False), gpu).text
        == "flash_attention_2"
    )
    assert (
        choose_attention(LearnerConfig(param_dtype="bfloat16", prefix_attention="mask"), gpu).text == "sdpa"
    )
    assert choose_attention(LearnerConfig(), gpu).vision == "sdpa"
    with pytest.raises(ValueError, match="param_dtype: bfloat16"):
        choose_attention(LearnerConfig(attention="flash_attention_2"), gpu)


def test_the_layout_is_chosen_once_from_the_config_and_the_family() -> None:
    from vidrl.learner.layouts import LAYOUTS, choose_layout
    from vidrl.models import family_named

    attention, state = family_named("qwen3_vl"), family_named("qwen3_5")
    assert choose_layout(LearnerConfig(), attention) == "two_pass"
    assert choose_layout(LearnerConfig(prefix_attention="mask"), attention) == "mask"
    assert choose_layout(LearnerConfig(shared_prefix=False), attention) == "plain"
    # Recurrent layers share the prompt through its cache, whatever the attention asked for;
    # activation checkpointing drops that cache, so such a model then runs plain.
    assert choose_layout(LearnerConfig(prefix_attention="mask"), state) == "prompt_state"
    assert choose_layout(LearnerConfig(gradient_checkpointing=True), state) == "plain"
    assert choose_layout(LearnerConfig(shared_prefix=False), state) == "plain"
    assert set(LAYOUTS) == {"plain", "two_pass", "mask", "flex", "prompt_state"}


def test_rank_metrics_merge_by_kind() -> None:
    """Loss shares and counts add up over ranks, time and memory take the largest rank, the
    mismatch becomes a mean over all ranks' tokens; grad_norm, lr and updates are every rank's."""
    from vidrl.learner.offpolicy import MismatchSums
    from vidrl.learner.types import LossSums, RankMetrics, merge_rank_metrics

    def rank(
        loss: float, tokens: int, seconds: float, host: float, mismatch: MismatchSums | None
    ) -> RankMetrics:
        terms = LossSums(loss=loss, policy_loss=loss / 2, kl=0.25, entropy=1.0, clip_fraction=0.125)
        return RankMetrics(terms, mismatch, 0.5, 1e-3, 2, tokens, 3, seconds, host, None)

    merged = merge_rank_metrics(
        [
            rank(0.25, 100, 1.5, 4e9, MismatchSums(abs_log_ratio=1.0, k3=0.5, beyond=2.0, tokens=10.0)),
            rank(0.5, 60, 2.0, 3e9, MismatchSums(abs_log_ratio=3.0, k3=1.5, beyond=0.0, tokens=30.0)),
        ]
    )
    assert merged["loss"] == 0.75 and merged["policy_loss"] == 0.375 and merged["kl"] == 0.5
    assert merged["entropy"] == 2.0 and merged["clip_fraction"] == 0.25
    assert (merged["tokens"], merged["microbatches"]) == (160.0, 6.0)
    assert (merged["step_seconds"], merged["peak_host_bytes"]) == (2.0, 4e9)
    assert "peak_device_bytes" not in merged  # no rank has a device
    assert (merged["grad_norm"], merged["lr"], merged["updates"]) == (0.5, 1e-3, 2.0)
    # (1 + 3) / (10 + 30) tokens, (0.5 + 1.5) / 40, (2 + 0) / 40
    assert (merged["mismatch/abs_log_ratio"], merged["mismatch/k3"], merged["mismatch/beyond"]) == (
        0.1,
        0.05,
        0.05,
    )
    assert "mismatch/k3" not in merge_rank_metrics([rank(0.25, 1, 1.0, 1.0, None)])


def test_skipped_updates_are_described_from_every_ranks_view() -> None:
    from vidrl.learner.types import SkippedUpdate, describe_skips

    nan = float("nan")
    rank0 = (SkippedUpdate(1, 2, 3, (), nan),)  # its groups were fine; the global norm was not
    rank1 = (SkippedUpdate(1, 2, 3, ("s7", "s9"), nan), SkippedUpdate(2, 1, 3, ("s1",), 0.5))
    assert describe_skips([rank0, rank1]) == (
        "update 2 of 3 (pass 1): loss not finite (samples s7, s9); gradient norm nan",
        "update 1 of 3 (pass 2): loss not finite (samples s1)",
    )
