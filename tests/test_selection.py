"""vidrl.selection on hand-made reward tables: statistics, selection policies, online gates."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from vidrl.data.sample import TaskKind
from vidrl.rewards.types import RewardScore
from vidrl.selection.config import GateConfig, SelectionConfig
from vidrl.selection.gates import NoGate, VarianceGate, build_gate, filter_groups, prompts_to_draw
from vidrl.selection.policies import select
from vidrl.selection.stats import (
    ComponentStats,
    SampleStats,
    sample_stats,
    stats_table,
    write_stats,
)


def _score(total: float, **components: float) -> RewardScore:
    return RewardScore(total=total, components=components)


def _mcq(correct: int, k: int = 8) -> list[RewardScore | None]:
    """k responses, all well formatted, `correct` of them right: total = 0.5 * 1 + 0.5 * acc."""
    return [
        _score(0.5 + 0.5 * acc, format=1.0, mcq_accuracy=acc)
        for acc in [1.0] * correct + [0.0] * (k - correct)
    ]


def _stats(
    sample_id: str,
    task: TaskKind = "tvg",
    variance: float = 0.05,
    mean: float = 0.5,
    pass_rate: float = 0.5,
    components: Mapping[str, ComponentStats] | None = None,
    k: int = 8,
) -> SampleStats:
    return SampleStats(
        sample_id, task, k, 8 - k, mean, variance, math.sqrt(variance), pass_rate, components or {}
    )


def _all_finite(s: SampleStats) -> bool:
    numbers = [s.mean, s.variance, s.std, s.pass_rate]
    numbers += [v for c in s.components.values() for v in (c.mean, c.variance, c.std)]
    return all(math.isfinite(v) for v in numbers)


# ----------------------------------------------------------------------------- stats


def test_continuous_sample_moments_and_pass_rate() -> None:
    ious = [0.0, 0.2, 0.4, 0.6]
    scores = [_score(0.5 * 1.0 + iou, format=1.0, tvg_iou=iou) for iou in ious]
    s = sample_stats("t0", "tvg", scores, pass_threshold=0.8)
    # totals 0.5, 0.7, 0.9, 1.1: mean 3.2 / 4 = 0.8; deviations -0.3, -0.1, 0.1, 0.3;
    # population variance (0.09 + 0.01 + 0.01 + 0.09) / 4 = 0.05; std sqrt(0.05) = 0.2236.
    assert (s.k, s.failed) == (4, 0)
    assert s.mean == pytest.approx(0.8)
    assert s.variance == pytest.approx(0.05)
    assert s.std == pytest.approx(math.sqrt(0.05))
    # totals >= 0.8: 0.9 and 1.1 -> 2 / 4
    assert s.pass_rate == 0.5
    # iou: mean 1.2 / 4 = 0.3, same deviations as the totals -> variance 0.05
    assert s.components["tvg_iou"].mean == pytest.approx(0.3)
    assert s.components["tvg_iou"].variance == pytest.approx(0.05)
    assert s.components["format"] == ComponentStats(count=4, mean=1.0, variance=0.0, std=0.0)


def test_discrete_sample_pass_rate_is_accuracy() -> None:
    s = sample_stats("m0", "mcq", _mcq(correct=3))
    # 3 right of 8 -> 0.375; totals 1.0 x3, 0.5 x5: mean (3 + 2.5) / 8 = 0.6875;
    # a two-valued total with spread 0.5: variance 0.5^2 * p (1 - p) = 0.25 * 0.375 * 0.625
    assert s.pass_rate == 0.375
    assert s.mean == pytest.approx(0.6875)
    assert s.variance == pytest.approx(0.05859375)
    assert s.components["mcq_accuracy"].mean == pytest.approx(0.375)


def test_discrete_response_without_accuracy_component_uses_the_total() -> None:
    scores = [_score(1.0, custom=1.0), _score(0.2, custom=0.2)]
    # no mcq_accuracy: pass when total >= 0.5 -> 1 of 2
    assert sample_stats("m", "mcq", scores).pass_rate == 0.5


def test_all_equal_rewards_have_exactly_zero_variance() -> None:
    s = sample_stats("t", "tvg", [_score(0.1, tvg_iou=0.1)] * 8)
    # 0.1 * 8 / 8 rounds off 0.1 in floating point; equal values must still give exactly 0
    assert (s.mean, s.variance, s.std) == (0.1, 0.0, 0.0)
    assert s.components["tvg_iou"].variance == 0.0


def test_single_response_has_zero_variance_not_nan() -> None:
    s = sample_stats("t", "tvg", [_score(0.7, tvg_iou=0.2)])
    assert (s.k, s.mean, s.variance, s.std) == (1, 0.7, 0.0, 0.0)
    assert _all_finite(s)


def test_none_and_non_finite_scores_are_counted_as_failed() -> None:
    scores = [None, _score(1.0), None, _score(0.0), _score(float("nan"))]
    s = sample_stats("t", "tvg", scores)
    # usable totals 1.0 and 0.0: mean 0.5, variance (0.25 + 0.25) / 2 = 0.25, std 0.5
    assert (s.k, s.failed) == (2, 3)
    assert (s.mean, s.variance, s.std) == (0.5, 0.25, 0.5)
    assert s.has_scores


def test_all_failed_gives_zeros_and_the_flag() -> None:
    s = sample_stats("g", "gqa", [None, None, None])
    assert (s.k, s.failed, s.mean, s.variance, s.std, s.pass_rate) == (0, 3, 0.0, 0.0, 0.0, 0.0)
    assert not s.has_scores
    assert s.components == {}
    assert _all_finite(s)


def test_unknown_task_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        sample_stats("x", "caption", [_score(1.0)])  # type: ignore[arg-type]


def test_parquet_table_holds_every_number(tmp_path: Path) -> None:
    stats = [
        sample_stats("t0", "tvg", [_score(0.5 + x, format=1.0, tvg_iou=x) for x in (0.1, 0.3)]),
        sample_stats("m0", "mcq", _mcq(correct=3)),
        sample_stats("dead", "track", [None, None]),
    ]
    path = tmp_path / "sub" / "stats.parquet"
    write_stats(path, stats)

    # Read back with pyarrow alone, as any consumer of stats.parquet would.
    table = pq.read_table(path)
    rows = table.to_pylist()
    base = ["sample_id", "task", "k", "failed", "mean", "variance", "std", "pass_rate"]
    assert [[row[c] for c in base] for row in rows] == [[getattr(s, c) for c in base] for s in stats]
    for row, s in zip(rows, stats, strict=True):  # rows in the order written
        for name, c in s.components.items():
            moments = [row[f"component/{name}/{m}"] for m in ("count", "mean", "variance", "std")]
            assert moments == [c.count, c.mean, c.variance, c.std]
    assert table.column("has_scores").to_pylist() == [True, True, False]
    # tvg_iou applies to the tvg sample only: null elsewhere; mean (0.1 + 0.3) / 2 = 0.2
    assert table.column("component/tvg_iou/mean").to_pylist() == [pytest.approx(0.2), None, None]
    assert table.column("component/mcq_accuracy/count").to_pylist() == [None, 8, None]


def test_stats_table_of_nothing_has_the_base_columns() -> None:
    table = stats_table([])
    assert table.num_rows == 0
    assert table.column_names[:3] == ["sample_id", "task", "k"]


# ------------------------------------------------------------------------- policies


def test_all_equal_continuous_rewards_are_dropped() -> None:
    stats = [sample_stats("flat", "tvg", [_score(0.3)] * 8)]
    result = select(stats, SelectionConfig())
    assert result.kept == ()
    assert result.dropped == {"flat": "low_variance"}
    assert (result.before, result.after) == ({"tvg": 1}, {"tvg": 0})


def test_a_single_sample_with_signal_is_kept() -> None:
    result = select([sample_stats("m", "mcq", _mcq(correct=1))], SelectionConfig())
    assert result.kept == ("m",)
    assert result.dropped == {}
    assert (result.before, result.after) == ({"mcq": 1}, {"mcq": 1})


def test_discrete_accuracy_strictly_between_zero_and_one() -> None:
    stats = [sample_stats(f"m{c}", "mcq", _mcq(correct=c)) for c in (0, 3, 8)]
    result = select(stats, SelectionConfig())
    # 0/8 and 8/8 give every response the same reward; 3/8 = 0.375 is in (0, 1)
    assert result.kept == ("m3",)
    assert result.dropped == {"m0": "pass_rate_too_low", "m8": "pass_rate_too_high"}
    assert Counter(result.dropped.values()) == {"pass_rate_too_low": 1, "pass_rate_too_high": 1}


def test_variance_threshold_for_continuous_tasks() -> None:
    stats = [
        sample_stats("wide", "tvg", [_score(v) for v in (0.5, 0.7, 0.9, 1.1)]),
        sample_stats("narrow", "track", [_score(v) for v in (0.50, 0.51)]),
    ]
    # wide: variance 0.05 (worked above); narrow: mean 0.505, deviations +-0.005,
    # variance 0.005^2 = 2.5e-5 <= 1e-4
    result = select(stats, SelectionConfig(min_variance=1e-4))
    assert result.kept == ("wide",)
    assert result.dropped == {"narrow": "low_variance"}
    # at 1e-5 the narrow one (2.5e-5) is above the threshold
    assert select(stats, SelectionConfig(min_variance=1e-5)).kept == ("wide", "narrow")


def test_mean_band_on_a_component() -> None:
    def iou(mean: float) -> dict[str, ComponentStats]:
        return {"tvg_iou": ComponentStats(8, mean, 0.01, 0.1)}

    stats = [
        _stats("zero", components=iou(0.0)),
        _stats("mid", components=iou(0.35)),
        _stats("edge", components=iou(0.7)),
        _stats("high", components=iou(0.9)),
        _stats("qa", task="mcq", pass_rate=0.5),  # no tvg_iou: the band does not apply
    ]
    cfg = SelectionConfig(min_mean=0.0, max_mean=0.7, band_component="tvg_iou")
    result = select(stats, cfg)
    # 0 < mean <= 0.7: 0.0 is out (exclusive), 0.7 is in (inclusive)
    assert result.kept == ("mid", "edge", "qa")
    assert result.dropped == {"zero": "below_band", "high": "above_band"}


def test_mean_band_on_the_total() -> None:
    stats = [_stats("low", mean=0.2), _stats("ok", mean=0.6)]
    result = select(stats, SelectionConfig(min_mean=0.5))
    assert result.kept == ("ok",)
    assert result.dropped == {"low": "below_band"}


def test_quotas_per_task_then_top_k() -> None:
    stats = [
        _stats("t0", variance=0.01),
        _stats("m0", task="mcq", variance=0.05),
        _stats("t1", variance=0.04),
        _stats("m1", task="mcq", variance=0.01),
        _stats("t2", variance=0.02),
        _stats("m2", task="mcq", variance=0.06),
        _stats("t3", variance=0.03),
    ]
    cfg = SelectionConfig(max_per_task={"tvg": 2}, top_k=3)
    result = select(stats, cfg)
    # quota tvg 2: t1 (0.04), t3 (0.03) stay; t2, t0 go. mcq has no quota.
    # top 3 of t1 .04, t3 .03, m0 .05, m1 .01, m2 .06: m2, m0, t1; in input order m0, t1, m2
    assert result.kept == ("m0", "t1", "m2")
    assert result.dropped == {"t0": "task_quota", "m1": "top_k", "t2": "task_quota", "t3": "top_k"}
    assert (result.before, result.after) == ({"tvg": 4, "mcq": 3}, {"tvg": 1, "mcq": 2})


def test_equal_variance_ties_keep_the_earlier_sample() -> None:
    stats = [_stats("a"), _stats("b"), _stats("c")]
    assert select(stats, SelectionConfig(top_k=2)).kept == ("a", "b")


def test_quota_zero_drops_a_task() -> None:
    stats = [_stats("t"), _stats("m", task="mcq")]
    result = select(stats, SelectionConfig(max_per_task={"tvg": 0}))
    assert result.kept == ("m",)
    assert result.after == {"tvg": 0, "mcq": 1}


def test_failed_samples_are_dropped_first() -> None:
    stats = [sample_stats("dead", "mcq", [None] * 8)]
    assert select(stats, SelectionConfig()).dropped == {"dead": "no_scores"}


def test_duplicate_sample_ids_are_an_error() -> None:
    with pytest.raises(ValueError, match="more than once"):
        select([_stats("a"), _stats("a")], SelectionConfig())


def test_selection_config_bounds() -> None:
    assert SelectionConfig().repeats == 8
    with pytest.raises(ValidationError, match="min_pass_rate"):
        SelectionConfig(min_pass_rate=0.5, max_pass_rate=0.5)
    with pytest.raises(ValidationError, match="min_mean"):
        SelectionConfig(min_mean=0.7, max_mean=0.7)
    with pytest.raises(ValidationError, match="band_component"):
        SelectionConfig(band_component="tvg_iou")
    with pytest.raises(ValidationError, match="max_per_task"):
        SelectionConfig(max_per_task={"tvg": -1})
    with pytest.raises(ValidationError):
        SelectionConfig(repeats=0)
    with pytest.raises(ValidationError):
        SelectionConfig(top_k_per_task=3)  # type: ignore[call-arg]


# ---------------------------------------------------------------------------- gates


def test_variance_gate_admits_only_groups_with_spread() -> None:
    gate = VarianceGate(eps=1e-6)
    assert gate.admit([1.0, 0.0, 1.0, 0.0])  # std 0.5
    assert not gate.admit([0.5] * 8)
    assert not gate.admit([1.0, 1.0 + 1e-7])  # std 5e-8 <= 1e-6
    assert not gate.admit([0.3])  # one response: no spread to learn from
    assert not gate.admit([])
    assert not gate.admit([1.0, float("nan")])
    # 0.1 * 3 / 3 != 0.1 in floating point: equal rewards still count as no spread at eps 0
    assert not VarianceGate(eps=0.0).admit([0.1, 0.1, 0.1])
    assert VarianceGate(eps=0.0).admit([0.1, 0.1, 0.2])


def test_admit_has_no_side_effects() -> None:
    gate = VarianceGate(eps=1e-6)
    gate.admit([0.0, 1.0])
    assert gate.state_dict() == {"groups_seen": 0, "groups_kept": 0}


def test_filter_groups_and_metrics() -> None:
    gate = VarianceGate(eps=1e-6)
    rewards = [[1.0, 0.0], [1.0, 1.0], [0.0, 0.5], [0.2, 0.2]]
    assert filter_groups(gate, rewards) == [0, 2]
    # 2 kept of 4 seen -> 0.5
    expected = {"gate/groups_seen": 4.0, "gate/groups_kept": 2.0, "gate/kept_fraction": 0.5}
    assert gate.metrics() == expected
    assert VarianceGate(eps=1e-6).metrics()["gate/kept_fraction"] == 0.0


def test_gate_state_round_trip_continues_the_counts() -> None:
    gate = VarianceGate(eps=1e-6)
    filter_groups(gate, [[1.0, 0.0], [1.0, 1.0], [0.0, 0.5]])
    resumed = VarianceGate(eps=1e-6)
    resumed.load_state_dict(json.loads(json.dumps(gate.state_dict())))
    for g in (gate, resumed):
        filter_groups(g, [[0.0, 0.0], [0.1, 0.9]])
    # 2 of 3, then 1 of 2: 3 kept of 5 seen -> 0.6
    assert resumed.metrics() == gate.metrics()
    assert resumed.metrics()["gate/kept_fraction"] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="inconsistent"):
        resumed.load_state_dict({"groups_seen": 1, "groups_kept": 2})


def test_no_gate_admits_everything() -> None:
    gate = NoGate()
    assert filter_groups(gate, [[1.0, 1.0], [0.3]]) == [0, 1]
    assert gate.metrics() == {}
    assert gate.state_dict() == {}


def test_build_gate_follows_the_config() -> None:
    assert isinstance(build_gate(GateConfig()), NoGate)
    gate = build_gate(GateConfig(enabled=True, eps=0.01))
    assert isinstance(gate, VarianceGate)
    assert gate.eps == 0.01
    with pytest.raises(ValidationError):
        GateConfig(max_refill_rounds=-1)


def test_prompts_to_draw_refills_up_to_the_limit() -> None:
    cfg = GateConfig(enabled=True, max_refill_rounds=2)
    assert prompts_to_draw(kept=5, wanted=8, rounds_done=0, cfg=cfg) == 3  # 8 - 5
    assert prompts_to_draw(kept=5, wanted=8, rounds_done=2, cfg=cfg) == 0  # rounds spent
    assert prompts_to_draw(kept=8, wanted=8, rounds_done=0, cfg=cfg) == 0  # full
    assert prompts_to_draw(kept=0, wanted=8, rounds_done=0, cfg=GateConfig()) == 0  # gate off
