"""Evaluation metrics and the JSON Lines report, on hand-worked numbers."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest

from vidrl.evaluation.metrics import accuracy, blind_best, grounding_metrics, temporal_iou
from vidrl.evaluation.report import compute_metrics, main_metrics


# --- temporal_iou ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pred", "gt", "expected"),
    [
        ((2.0, 6.0), (4.0, 8.0), 2 / 6),  # overlap [4, 6] = 2, union [2, 8] = 6
        ((4.0, 8.0), (2.0, 6.0), 2 / 6),  # symmetric
        ((3.0, 5.0), (0.0, 10.0), 0.2),  # inside: 2 / 10
        ((0.0, 10.0), (0.0, 10.0), 1.0),  # identical
        ((0.0, 2.0), (2.0, 4.0), 0.0),  # touching at 2: overlap 0
        ((10.0, 20.0), (0.0, 5.0), 0.0),  # disjoint
        ((5.0, 5.0), (0.0, 10.0), 0.0),  # a point: overlap 0 / union 10
        ((3.0, 3.0), (3.0, 3.0), 0.0),  # point on point: union 0 -> 0, not a ZeroDivisionError
        ((6.0, 2.0), (2.0, 6.0), 0.0),  # reversed prediction is wrong, not repaired
        ((math.nan, 4.0), (2.0, 6.0), 0.0),
        ((0.0, math.inf), (2.0, 6.0), 0.0),
        (None, (2.0, 6.0), 0.0),  # unparsed
    ],
)
def test_temporal_iou_hand_worked(pred, gt, expected) -> None:
    assert temporal_iou(pred, gt) == pytest.approx(expected)


@pytest.mark.parametrize("gt", [(6.0, 2.0), (math.nan, 1.0), (0.0, math.inf)])
def test_temporal_iou_rejects_malformed_ground_truth(gt) -> None:
    with pytest.raises(ValueError, match="ground-truth"):
        temporal_iou((0.0, 1.0), gt)


# --- grounding_metrics -------------------------------------------------------------------------
def test_grounding_metrics_percent_and_boundaries() -> None:
    # Each threshold is hit exactly once at its boundary: IoU == t counts for R1@t.
    ious = [0.3, 0.5, 0.7, 0.0]
    metrics = grounding_metrics(ious)
    # mIoU = (0.3 + 0.5 + 0.7 + 0) / 4 * 100 = 37.5
    assert metrics["mIoU"] == pytest.approx(37.5)
    assert metrics["R1@0.3"] == pytest.approx(75.0)  # 0.3, 0.5, 0.7 -> 3 / 4
    assert metrics["R1@0.5"] == pytest.approx(50.0)  # 0.5, 0.7 -> 2 / 4
    assert metrics["R1@0.7"] == pytest.approx(25.0)  # 0.7 -> 1 / 4
    assert metrics["n"] == 4


def test_grounding_metrics_just_below_threshold_misses() -> None:
    metrics = grounding_metrics([0.4999, 0.2999, 0.6999])
    assert metrics["R1@0.3"] == pytest.approx(200 / 3)  # only 0.4999 and 0.6999 reach 0.3
    assert metrics["R1@0.5"] == pytest.approx(100 / 3)  # only 0.6999
    assert metrics["R1@0.7"] == 0.0


def test_grounding_metrics_counts_a_half_lost_to_rounding() -> None:
    # pred (0.0, 0.3) vs gt (0.1, 0.4): overlap 0.2, union 0.4 -> exactly 0.5, but float
    # subtraction gives 0.49999999999999994; it must still count for R1@0.5.
    iou = temporal_iou((0.0, 0.3), (0.1, 0.4))
    assert iou < 0.5
    assert grounding_metrics([iou])["R1@0.5"] == 100.0


def test_grounding_metrics_empty() -> None:
    assert grounding_metrics([]) == {
        "mIoU": 0.0,
        "R1@0.3": 0.0,
        "R1@0.5": 0.0,
        "R1@0.7": 0.0,
        "n": 0,
    }


# --- accuracy ----------------------------------------------------------------------------------
def test_accuracy_percent_and_unparsed() -> None:
    # 2 right (A, C) out of 4; None is wrong -> 50 %
    assert accuracy(["A", "B", "C", None], ["A", "C", "C", "D"]) == pytest.approx(50.0)


def test_accuracy_empty_and_mismatched() -> None:
    assert accuracy([], []) == 0.0
    with pytest.raises(ValueError, match="2 predictions for 1 answers"):
        accuracy(["A", "B"], ["A"])


# --- compute_metrics ---------------------------------------------------------------------------
def _tvg(prediction: str, start: float, end: float, duration: float = 30.0) -> dict:
    return {"prediction": prediction, "timestamps": [start, end], "duration": duration}


def test_compute_metrics_grounding_with_tags() -> None:
    rows = [
        _tvg("<answer>2 to 6</answer>", 4.0, 8.0),  # IoU 2/6
        _tvg('<answer>{"start_time": "4", "end_time": "8"}</answer>', 4.0, 8.0),  # IoU 1
        _tvg("from 4 to 8", 4.0, 8.0),  # no <answer>: unparsed, IoU 0
    ]
    result = compute_metrics(rows, "tags")
    assert result["n"] == 3
    assert result["unparsed"] == 1
    assert result["mIoU"] == pytest.approx((2 / 6 + 1.0 + 0.0) / 3 * 100)  # 44.44
    assert result["R1@0.3"] == pytest.approx(200 / 3)  # 1/3 and 1 reach 0.3
    assert result["R1@0.5"] == pytest.approx(100 / 3)  # only the exact match
    assert "accuracy" not in result
    assert result["bad_rows"] == 0
    assert result["errors"] == []


def test_compute_metrics_lmms_reads_what_tags_rejects() -> None:
    rows = [_tvg("from 4 to 8", 4.0, 8.0), _tvg("It happens from 8 to 4 seconds.", 4.0, 8.0)]
    result = compute_metrics(rows, "lmms")
    # both read as (4, 8) (the second swapped): IoU 1 each
    assert (result["n"], result["unparsed"], result["mIoU"]) == (2, 0, pytest.approx(100.0))


def test_compute_metrics_lmms_reads_letters_without_tags() -> None:
    rows = [
        {"prediction": "The answer is (C)", "answer": "C"},  # free text: right
        {"prediction": "<think>A?</think><answer>B</answer>", "answer": "B"},  # tag used: right
        {"prediction": "A or B", "answer": "A"},  # two choices: unparsed
    ]
    result = compute_metrics(rows, "lmms")
    assert (result["n_mcq"], result["unparsed_mcq"]) == (3, 1)
    assert result["accuracy"] == pytest.approx(200 / 3)  # 2 right of 3
    assert result["n"] == 0  # no grounding rows: the grounding keys are still there
    assert result["mIoU"] == 0.0


def test_compute_metrics_mixed_mcq_and_wrapped_interval() -> None:
    rows = [
        {"prediction": "<answer>B</answer>", "answer": "(B)"},  # right
        {"prediction": "<answer>A</answer>", "answer": "C", "options": ["x", "y", "z"]},  # wrong
        {"prediction": "B", "answer": "B"},  # no tag: unparsed under tags
        _tvg("<answer>0 to 10</answer>", 0.0, 5.0) | {"timestamps": [[0.0, 5.0]]},  # IoU 5/10
    ]
    result = compute_metrics(rows, "tags")
    assert result["n_mcq"] == 3
    assert result["unparsed_mcq"] == 1
    assert result["accuracy"] == pytest.approx(100 / 3)  # 1 right of 3
    assert result["n"] == 1
    assert result["mIoU"] == pytest.approx(50.0)
    assert result["R1@0.5"] == 100.0


def test_compute_metrics_reports_bad_rows_and_goes_on() -> None:
    rows = [
        ["not", "an", "object"],
        {"timestamps": [1, 2], "duration": 10},
        {"prediction": 3, "answer": "A"},
        {"prediction": "x"},
        {"prediction": "x", "timestamps": [1, 2]},
        {"prediction": "x", "timestamps": [1, 2], "duration": 0},
        {"prediction": "x", "timestamps": [5, 2], "duration": 10},
        {"prediction": "x", "timestamps": [1, "2"], "duration": 10},
        {"prediction": "x", "timestamps": [1, 2, 3], "duration": 10},
        {"prediction": "x", "timestamps": [1, 2], "duration": True},
        {"prediction": "x", "timestamps": [1, math.nan], "duration": 10},
        {"prediction": "x", "answer": "maybe"},
        {"prediction": "x", "answer": "A", "options": "A. yes"},
        {"prediction": "x", "answer": "A", "timestamps": [1, 2], "duration": 10},
        _tvg("<answer>2 to 6</answer>", 4.0, 8.0),  # the one good row: IoU 2/6
    ]
    result = compute_metrics(rows, "tags")
    assert [error["line"] for error in result["errors"]] == list(range(1, 15))
    assert result["bad_rows"] == 14
    reasons = [error["reason"] for error in result["errors"]]
    assert "not an object" in reasons[0]
    assert "'prediction'" in reasons[1] and "'prediction'" in reasons[2]
    assert "neither" in reasons[3]
    assert "'duration'" in reasons[4] and "'duration'" in reasons[5]
    assert "reversed" in reasons[6]
    assert "timestamps[1]" in reasons[7]
    assert "'timestamps'" in reasons[8]
    assert "'duration'" in reasons[9]
    assert "not finite" in reasons[10]
    assert "option letter" in reasons[11]
    assert "'options'" in reasons[12]
    assert "both" in reasons[13]
    assert result["n"] == 1
    assert result["mIoU"] == pytest.approx(100 * 2 / 6)
    assert "accuracy" not in result  # no mcq row was good enough to score


def test_compute_metrics_empty_and_unknown_mode() -> None:
    result = compute_metrics([], "lmms")
    assert (result["n"], result["unparsed"], result["mIoU"], result["errors"]) == (0, 0, 0.0, [])
    with pytest.raises(ValueError, match="parse must be one of"):
        compute_metrics([], "regex")


# --- main_metrics ------------------------------------------------------------------------------
def test_main_metrics_prints_one_json_object(tmp_path: Path) -> None:
    path = tmp_path / "preds.jsonl"
    lines = [
        json.dumps(_tvg("<answer>2 to 6</answer>", 4.0, 8.0)),  # IoU 2/6
        "{not json",
        "",  # blank lines are not rows
        json.dumps({"prediction": "<answer>C</answer>", "answer": "C"}),
        json.dumps(_tvg("<answer>4 to 8</answer>", 4.0, 8.0, duration=math.nan)),  # NaN duration
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"prediction": "\xff"}\n')
    out = io.StringIO()
    assert main_metrics(str(path), "tags", out) == 3
    text = out.getvalue()
    assert text.count("\n") == 1
    summary = json.loads(text)
    assert summary["n"] == 1
    assert summary["mIoU"] == pytest.approx(100 * 2 / 6)
    assert (summary["accuracy"], summary["n_mcq"]) == (100.0, 1)
    assert [error["line"] for error in summary["errors"]] == [2, 5, 6]  # file line numbers
    assert summary["errors"][0]["reason"].startswith("not JSON")
    assert summary["errors"][2]["reason"] == "not UTF-8 text"


def test_blind_best_is_the_best_single_interval_on_the_grid() -> None:
    # Both answers are [0, 2]: answering [0, 2] to each scores IoU 1.
    assert blind_best([(0.0, 2.0), (0.0, 2.0)], longest=2.0, grid=1.0) == (100.0, (0.0, 2.0))
    # [0, 1] and [2, 3]: one of them exactly (IoU 1 and 0) averages 0.5; [0, 3] gets 1/3 each,
    # [0, 2] 0.5 and 0 -> 0.25. The tie between [0, 1] and [2, 3] goes to the first on the grid.
    assert blind_best([(0.0, 1.0), (2.0, 3.0)], longest=3.0, grid=1.0) == (50.0, (0.0, 1.0))
    # Off-grid answers: [0.5, 1.5] against the grid's [0, 1] and [1, 2] (IoU 1/3), [0, 2] (1/2).
    assert blind_best([(0.5, 1.5)], longest=2.0, grid=1.0) == (50.0, (0.0, 2.0))
    assert blind_best([], longest=5.0) == (0.0, (0.0, 0.0))
