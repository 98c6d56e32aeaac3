"""Per-task evaluation scores on hand-worked numbers, the predictions file read back by
`vidrl metrics` with the same numbers, the flat metrics for a training sink, and the compare
table of `vidrl eval --compare`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from vidrl.cluster.evaluate import EvalResult
from vidrl.data.sample import Sample
from vidrl.evaluation.compare import compare_runs, format_table, table_rows
from vidrl.evaluation.report import compute_metrics, main_metrics
from vidrl.evaluation.scoring import Scored, flat_metrics, prediction_row, score_prediction, summarize

TVG = Sample(id="t", task="tvg", video="v.mp4", question="q", duration=10.0, timestamps=((4.0, 8.0),))
MCQ = Sample(
    id="m", task="mcq", video="v.mp4", question="q", duration=10.0, options=("x", "y", "z"), answer="B"
)
GQA = Sample(
    id="g",
    task="gqa",
    video="v.mp4",
    question="q",
    duration=10.0,
    options=("x", "y"),
    answer="A",
    timestamps=((0.0, 2.0), (4.0, 6.0)),
)
TRACK = Sample(
    id="k",
    task="track",
    video="v.mp4",
    question="q",
    duration=10.0,
    boxes=((0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)),
)


def _mcq(answer: str, dataset: str) -> Sample:
    return Sample(
        id=f"m{dataset}",
        task="mcq",
        video="v",
        question="q",
        duration=1.0,
        options=("x", "y"),
        answer=answer,
        dataset=dataset,
    )


def _score_all(samples: list[Sample], texts: list[str], parse: str = "tags") -> list[Scored]:
    # What `vidrl eval` does with the greedy outputs (vidrl.cluster.evaluate): each scored.
    return [score_prediction(s, t, parse) for s, t in zip(samples, texts, strict=True)]


def _tasks(samples: list[Sample], texts: list[str], parse: str = "tags") -> dict:
    return summarize(_score_all(samples, texts, parse), parse)


def test_tvg_scores_iou_and_counts_unparsed() -> None:
    scored = score_prediction(TVG, "<answer>2 to 6</answer>")
    assert scored.parsed == [2.0, 6.0]
    assert scored.score == pytest.approx(2 / 6)  # overlap [4, 6] = 2, union [2, 8] = 6
    missing = score_prediction(TVG, "from 4 to 8")  # no <answer> under the strict parser
    assert (missing.parsed, missing.score, missing.unparsed) == (None, 0.0, True)
    assert score_prediction(TVG, "from 4 to 8", parse="lmms").score == 1.0


def test_mcq_invalid_option_and_per_type_accuracy() -> None:
    samples = [_mcq("A", "ocr"), _mcq("A", "ocr"), _mcq("B", "count"), _mcq("B", "count")]
    texts = ["<answer>A</answer>", "<answer>B</answer>", "<answer>A or B</answer>", "<answer>C</answer>"]
    summary = _tasks(samples, texts)["mcq"]
    # right, wrong, two options named (invalid), C is not among 2 options (invalid)
    assert summary["accuracy"] == 25.0  # 1 of 4
    assert summary["invalid_option"] == 50.0  # 2 of 4 name no single valid option
    assert summary["unparsed"] == 2 and summary["n"] == 4
    assert summary["per_type"] == {"count": {"accuracy": 0.0, "n": 2}, "ocr": {"accuracy": 50.0, "n": 2}}


def test_gqa_answer_accuracy_and_interval_iou() -> None:
    text = "<answer>A</answer><glue>[(1, 2), (4, 8)]</glue>"
    scored = score_prediction(GQA, text)
    assert scored.parsed == {"answer": "A", "glue": [[1.0, 2.0], [4.0, 8.0]]}
    assert scored.score == 1.0
    # truth [0,2] u [4,6] (4 s); prediction [1,2] u [4,8] (5 s); overlap [1,2] + [4,6] = 3 s;
    # union 4 + 5 - 3 = 6 s -> 0.5
    assert scored.iou == pytest.approx(0.5)
    wrong = score_prediction(GQA, "<answer>B</answer>")  # wrong letter, no glue
    summary = _tasks([GQA, GQA], [text, "<answer>B</answer>"])["gqa"]
    assert (wrong.score, wrong.iou, wrong.unparsed) == (0.0, 0.0, False)
    assert summary["accuracy"] == 50.0 and summary["mIoU"] == pytest.approx(25.0)  # (0.5 + 0) / 2


def test_track_mean_box_iou_clamped_and_wrong_count_unparsed() -> None:
    # frame 1 exact (IoU 1); frame 2 [0.5,0.5,1.2,1.2] clamps to [0.5,0.5,1,1], exact -> mean 1.0;
    assert score_prediction(TRACK, "<answer>[[0,0,0.5,0.5],[0.5,0.5,1.2,1.2]]</answer>").score == 1.0
    # frame 2 [0.5,0.5,1,0.75]: area 0.125 inside the truth's 0.25 -> 0.5; mean (1 + 0.5) / 2
    half = score_prediction(TRACK, "<answer>[[0,0,0.5,0.5],[0.5,0.5,1,0.75]]</answer>")
    assert half.score == pytest.approx(0.75)
    one_box = score_prediction(TRACK, "<answer>[[0,0,0.5,0.5]]</answer>")
    assert (one_box.score, one_box.unparsed) == (0.0, True)
    summary = _tasks([TRACK, TRACK], [half.prediction, one_box.prediction])["track"]
    assert summary == {"mIoU": pytest.approx(37.5), "n": 2, "unparsed": 1}  # (0.75 + 0) / 2


def test_predictions_rows_give_the_same_numbers_through_vidrl_metrics(tmp_path: Path) -> None:
    samples = [TVG, TVG, MCQ, MCQ, GQA, TRACK, _mcq("A", "ocr")]
    texts = [
        '<answer>{"start_time": "4", "end_time": "8"}</answer>',  # IoU 1
        "no answer",  # unparsed tvg
        "<answer>B</answer>",  # right
        "<answer>A or B</answer>",  # invalid option
        "<answer>A</answer><glue>[(1, 2), (4, 8)]</glue>",  # right, glue IoU 0.5
        "<answer>[[0,0,0.5,0.5],[0.5,0.5,1,0.75]]</answer>",  # mean box IoU 0.75
        "<answer>(A)</answer>",
    ]
    for parse in ("tags", "lmms", "free"):
        scored = _score_all(samples, texts, parse)
        path = tmp_path / f"{parse}.jsonl"
        path.write_text("".join(json.dumps(prediction_row(s, variant="x")) + "\n" for s in scored))
        out = io.StringIO()
        assert main_metrics(str(path), parse, out) == 0
        report = json.loads(out.getvalue())
        assert report["tasks"] == _tasks(samples, texts, parse)
    # the flat keys of `vidrl metrics` as well: tvg (1 + 0) / 2 = 50%; mcq 2 right of 3
    assert (report["n"], report["mIoU"], report["unparsed"]) == (2, 50.0, 1)
    assert report["accuracy"] == pytest.approx(200 / 3) and report["n_mcq"] == 3


def test_task_rows_with_bad_ground_truth_are_reported() -> None:
    rows = [
        {"prediction": "x", "task": "gqa", "answer": "A", "timestamps": [], "duration": 10},
        {"prediction": "x", "task": "track", "boxes": [[0, 0, 1]], "duration": 10},
        {"prediction": "x", "task": "caption", "answer": "A"},
    ]
    result = compute_metrics(rows, "tags")
    reasons = [e["reason"] for e in result["errors"]]
    assert result["bad_rows"] == 3
    assert "gqa" in reasons[0] and "'boxes'" in reasons[1] and "unknown task" in reasons[2]


def test_eval_result_flat_metrics_for_a_training_sink() -> None:
    scored = tuple(_score_all([TVG, _mcq("A", "ocr")], ["<answer>2 to 6</answer>", "<answer>A</answer>"]))
    result = EvalResult("no_think", "tags", scored, 1, 2, ("v.mp4: unreadable",), 0.5)
    metrics = result.metrics()
    assert metrics["eval/tvg/mIoU"] == pytest.approx(100 * 2 / 6)
    assert metrics["eval/tvg/R1@0.3"] == 100.0 and metrics["eval/tvg/R1@0.5"] == 0.0  # IoU 0.33
    assert metrics["eval/mcq/accuracy"] == 100.0 and metrics["eval/mcq/accuracy/ocr"] == 100.0
    assert metrics["eval/skipped"] == 3.0  # 1 video + 2 prompts
    assert all(isinstance(v, float) for v in metrics.values())
    assert result.summary()["skipped"] == 3 and result.summary()["samples"] == 2
    assert flat_metrics({"tvg": {"mIoU": float("nan")}}) == {}


def _summary(miou: float, accuracy: float | None) -> dict:
    tasks: dict = {"tvg": {"mIoU": miou, "R1@0.3": 50.0, "n": 4, "unparsed": 0}}
    if accuracy is not None:
        tasks["mcq"] = {
            "accuracy": accuracy,
            "invalid_option": 0.0,
            "per_type": {"ocr": {"accuracy": accuracy}},
        }
    return {"variants": {"no_think": tasks | {"samples": 4, "skipped": 0}}}


def test_compare_table_rows_runs_as_columns_and_gaps(tmp_path: Path) -> None:
    summaries = {"sft": _summary(17.14, 20.0), "grpo": _summary(29.6, None)}
    rows = dict(table_rows(summaries))
    assert rows["no_think tvg mIoU"] == [17.14, 29.6]
    assert rows["no_think mcq accuracy"] == [20.0, None]  # grpo has no mcq: a gap
    assert rows["no_think mcq accuracy[ocr]"] == [20.0, None]
    assert "no_think samples" not in " ".join(rows)  # counts are not metrics rows
    table = format_table(summaries).splitlines()
    assert table[0].split() == ["metric", "sft", "grpo"]
    assert table[1].split() == ["no_think", "tvg", "mIoU", "17.1", "29.6"]
    (accuracy_line,) = [line for line in table if line.startswith("no_think mcq accuracy ")]
    assert accuracy_line.split()[-2:] == ["20.0", "-"]

    for name, summary in summaries.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    by_folder = compare_runs([tmp_path / "sft", tmp_path / "grpo" / "summary.json"])
    assert by_folder == format_table(summaries)
    with pytest.raises(FileNotFoundError):
        compare_runs([tmp_path / "nowhere"])
