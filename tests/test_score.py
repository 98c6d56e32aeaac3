"""`vidrl score`: JSONL rows in, rows with reward and components out, bad rows reported."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from vidrl.rewards.score import main_score

TVG_ROW = {
    "task": "tvg",
    "response": "<think>t</think><answer>12 to 22</answer>",
    "timestamps": [10, 20],
    "duration": 30,
}
MCQ_ROW = {"task": "mcq", "response": "<think>t</think><answer>(B)</answer>", "answer": "B"}
GQA_ROW = {
    "task": "gqa",
    "response": "<think>t</think><answer>B</answer><glue>[(5, 20)]</glue>",
    "answer": "(B)",
    "timestamps": [[0, 10], [5, 15]],
    "duration": 30,
}
TRACK_ROW = {
    "task": "track",
    "response": "<think>t</think><answer>[[0, 0, 0.25, 0.5], [0.5, 0.5, 1, 1]]</answer>",
    "boxes": [[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]],
}


def lines(*rows: object) -> list[str]:
    return [row if isinstance(row, str) else json.dumps(row) + "\n" for row in rows]


def score_rows(raw_lines: list[str], preset: str | None, folder: Path) -> list[dict]:
    """The output rows of `vidrl score` (`main_score`) on a file holding `raw_lines`."""
    path = folder / "responses.jsonl"
    path.write_text("".join(line if line.endswith("\n") else line + "\n" for line in raw_lines))
    out = io.StringIO()
    main_score(str(path), preset, out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_good_rows_get_reward_and_components(tmp_path: Path) -> None:
    tvg, mcq, gqa, track = score_rows(lines(TVG_ROW, MCQ_ROW, GQA_ROW, TRACK_ROW), None, tmp_path)
    # vidrl: 0.5 * format + content. tvg: (12, 22) vs (10, 20) -> IoU 8 / 12.
    assert tvg == {
        **TVG_ROW,
        "reward": pytest.approx(0.5 + 8 / 12),
        "components": pytest.approx({"format": 1.0, "tvg_iou": 8 / 12}),
    }
    assert mcq["reward"] == 0.5 + 1.0 and "error" not in mcq
    # gqa: glue (5, 20) vs merged (0, 15): inter 10, union 20 -> 0.5; "(B)" is read as B.
    assert gqa["components"] == {"format": 1.0, "gqa_accuracy": 1.0, "gqa_iou": 0.5}
    assert gqa["reward"] == 0.5 + 1.0 + 0.5
    # track: frame IoUs 0.5 and 1.0 -> mean 0.75
    assert track["reward"] == 0.5 + 0.75


def test_other_presets_and_not_applicable_rows(tmp_path: Path) -> None:
    tvg, gqa = score_rows(lines(TVG_ROW, GQA_ROW), "temporal_r1", tmp_path)
    assert tvg["components"] == {"format": 0.0, "tvg_iou": 0.0}  # "12 to 22" is not JSON
    assert gqa["reward"] is None and gqa["components"] == {} and "error" not in gqa
    (tvg,) = score_rows(lines(TVG_ROW), "videochat_r1", tmp_path)
    assert tvg["reward"] == pytest.approx(1 + 8 / 12)


@pytest.mark.parametrize(
    ("answer", "components"),
    [
        ("[B]", {"format": 1.0, "mcq_accuracy": 1.0}),
        ("B - the man opens the door", {"format": 1.0, "mcq_accuracy": 1.0}),
        ("[C]", {"format": 1.0, "mcq_accuracy": 0.0}),  # one option, the wrong one
        ("[A] or [B]", {"format": 0.0, "mcq_accuracy": 0.0}),  # two options: no answer
        ("A - B", {"format": 0.0, "mcq_accuracy": 0.0}),
    ],
)
def test_letter_forms_models_write(answer: str, components: dict, tmp_path: Path) -> None:
    row = {**MCQ_ROW, "response": f"<think>t</think><answer>{answer}</answer>"}
    (scored,) = score_rows(lines(row), None, tmp_path)
    assert scored["components"] == components and "error" not in scored


def test_charades_style_single_interval_is_accepted(tmp_path: Path) -> None:
    (row,) = score_rows(lines({**TVG_ROW, "timestamps": [[10, 20]]}), None, tmp_path)
    assert row["components"]["tvg_iou"] == pytest.approx(8 / 12)


@pytest.mark.parametrize(
    ("line", "fragments"),
    [
        ("{not json\n", ["line 1: not valid JSON"]),
        ("[1, 2]\n", ["line 1: expected a JSON object, got list"]),
        (
            json.dumps({**TVG_ROW, "task": "video"}),
            ["line 1: field 'task': unknown task 'video'", "tvg, mcq, gqa, track"],
        ),
        (json.dumps({"task": "mcq", "answer": "B"}), ["line 1: field 'response': missing"]),
        (json.dumps({**TVG_ROW, "response": 7}), ["field 'response': expected a string, got int"]),
        (
            json.dumps({**TVG_ROW, "duration": True}),
            ["field 'duration': expected a number, got bool"],
        ),
        (
            json.dumps({**TVG_ROW, "duration": 0}),
            ["field 'duration': expected seconds > 0, got 0.0"],
        ),
        (
            '{"task": "tvg", "response": "", "timestamps": [1, 2], "duration": NaN}',
            ["field 'duration': expected a finite number"],
        ),
        (
            json.dumps({**TVG_ROW, "timestamps": [1, 2, 3]}),
            ["field 'timestamps': expected [start, end], got a list of 3"],
        ),
        (
            json.dumps({**MCQ_ROW, "answer": "A or B"}),
            ["field 'answer': expected an option letter"],
        ),
        (
            json.dumps({**MCQ_ROW, "options": "abc"}),
            ["field 'options': expected a list of strings, got str"],
        ),
        (
            json.dumps({**GQA_ROW, "timestamps": [[0, "10"]]}),
            ["field 'timestamps': expected a number, got str"],
        ),
        (
            json.dumps({**TRACK_ROW, "boxes": []}),
            ["field 'boxes': expected [[x0, y0, x1, y1], ...], got a list of 0"],
        ),
        (
            json.dumps({**TRACK_ROW, "boxes": [[0, 0, 1]]}),
            ["field 'boxes': expected [x0, y0, x1, y1], got a list of 3"],
        ),
    ],
)
def test_bad_rows_name_line_field_and_problem(line: str, fragments: list[str], tmp_path: Path) -> None:
    (row,) = score_rows([line], "vidrl", tmp_path)
    assert "reward" not in row
    for fragment in fragments:
        assert fragment in row["error"]


def test_bad_rows_keep_the_input_and_are_not_fatal(tmp_path: Path) -> None:
    bad_json = "{oops"
    raw_lines = [bad_json + "\n", "\n", json.dumps({"task": "x"}), json.dumps(MCQ_ROW)]
    rows = score_rows(raw_lines, None, tmp_path)
    assert rows[0] == {"raw": bad_json, "error": rows[0]["error"]}
    assert rows[1]["task"] == "x"
    assert rows[1]["error"].startswith("line 3: ")  # blank line 2 skipped, still counted
    assert rows[2]["reward"] == 1.5  # the good row after them is still scored


def test_unknown_preset_is_an_error_before_any_row(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="preset"):
        main_score(str(tmp_path / "never_opened.jsonl"), "nope", io.StringIO())


def test_main_score_writes_jsonl_and_counts_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "responses.jsonl"
    path.write_text("".join(lines(TVG_ROW, "not json\n", MCQ_ROW, {"task": "mcq"})))
    out = io.StringIO()
    assert main_score(str(path), None, out) == 2
    written = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [("error" in row) for row in written] == [False, True, False, True]
    assert written[2]["reward"] == 1.5  # 0.5 * format + 1.0 * accuracy


def test_main_score_reads_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(MCQ_ROW) + "\n"))
    out = io.StringIO()
    assert main_score("-", "vidrl", out) == 0
    assert json.loads(out.getvalue())["components"] == {"format": 1.0, "mcq_accuracy": 1.0}


def test_input_rows_with_an_error_key_are_not_counted_as_bad(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({**MCQ_ROW, "error": "from an earlier tool"}) + "\n")
    assert main_score(str(path), None, io.StringIO()) == 0
