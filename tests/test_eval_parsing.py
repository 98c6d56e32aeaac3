"""The prediction parsers on realistic model outputs (lmms-eval's own cases: test_lmms_parser_cases.py),
and the option letter each parse mode reads."""

from __future__ import annotations

import math

import pytest

from vidrl.data.sample import Sample
from vidrl.evaluation.parsing import INTERVAL_PARSERS, parse_free, parse_lmms, parse_tags
from vidrl.evaluation.scoring import score_prediction

DURATION = 30.0
MCQ = Sample(
    id="m",
    task="mcq",
    video="v",
    question="Which shape appears first?",
    duration=DURATION,
    options=("a blue circle", "a green triangle", "a red square"),
    answer="C",
)


# --- parse_free: vidrl's own free-text reader ------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # "to" -> "-", then an `a - b` range
        ("The event happens from 12.5 to 20 seconds.", (12.5, 20.0)),
        ("12.5 - 20", (12.5, 20.0)),
        ("The query happens in 3.2-9.8 seconds.", (3.2, 9.8)),
        ("It occurs from 4 seconds to 9 seconds.", (4.0, 9.0)),  # unit between number and "-"
        ("Between 2.5 \u2013 6 s.", (2.5, 6.0)),  # en dash
        # clock ranges: 00:01:05 = 65 s, 1:10 = 70 s
        ("00:01:05 - 00:01:10", (65.0, 70.0)),
        ("The moment is 1:05 to 1:10.", (65.0, 70.0)),
        ("From 0:07.5 to 0:12", (7.5, 12.0)),
        # no range: the first two times of the start/end/happen sentences, paired
        ("start at 3s and end at 7s", (3.0, 7.0)),
        ("Starting time: 0.8 seconds\nEnding time: 1.1 seconds", (0.8, 1.1)),
        ("The start time for this event is 0 seconds, and the end time is 12 seconds.", (0, 12)),
        ("The event starts at 00:00:18 and ends at 00:00:23.", (18.0, 23.0)),
        # reversed pairs are swapped
        ("The event happens from 20 to 12.5 seconds.", (12.5, 20.0)),
        ("It ends at 9 and starts at 4.", (4.0, 9.0)),
        ("00:00:30 - 00:00:10", (10.0, 30.0)),
        # a sentence with a keyword wins over an earlier range without one
        ("I watched 1 - 2 clips!\nThe door opening happens from 5 to 8.", (5.0, 8.0)),
        # the prompt's echoed example is not the answer
        ("A specific example is : 20.8 - 30.0 seconds. It happens in 4 - 6.", (4.0, 6.0)),
        # past the end is kept, as lmms-eval keeps it
        ("It happens from 25 to 45 seconds.", (25.0, 45.0)),
        # "to" with no spaces around it is a dash too
        ("15to20", (15.0, 20.0)),
    ],
)
def test_parse_free_reads_free_text(text: str, expected: tuple[float, float]) -> None:
    assert parse_free(text, DURATION) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I cannot tell when this happens.",  # no numbers
        "The person opens the door.",
        "The event starts at 5 seconds.",  # a single time is not an interval
        "There are 2 people and 3 chairs.",  # numbers, but no range and no start/end/happen
        "It happens from 1" + "0" * 400 + " to 5.",  # overflows to inf
    ],
)
def test_parse_free_unparseable_is_none(text: str) -> None:
    assert parse_free(text, DURATION) is None


# --- parse_tags: the strict <answer> format -----------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('<think>x</think> <answer>{"start_time": "2.5", "end_time": "7"}</answer>', (2.5, 7.0)),
        ("<think>x</think><answer>2.5 to 7</answer>", (2.5, 7.0)),
        # the last <answer> counts
        ("<answer>1 to 2</answer> then <answer>3 to 4</answer>", (3.0, 4.0)),
        # clamped to [0, 30]
        ("<answer>25 to 45</answer>", (25.0, 30.0)),
        ("<answer>40 to 50</answer>", (30.0, 30.0)),  # wholly past the end: a point, IoU 0
        ("<answer>5 to 5</answer>", (5.0, 5.0)),
    ],
)
def test_parse_tags_good(text: str, expected: tuple[float, float]) -> None:
    assert parse_tags(text, DURATION) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "The event happens from 2.5 to 7 seconds.",  # no <answer>
        "<answer></answer>",
        "<answer>soon</answer>",
        "<answer>7 to 2.5</answer>",  # reversed: a wrong answer, not swapped
        '<answer>{"start_time": "7", "end_time": "2.5"}</answer>',
    ],
)
def test_parse_tags_bad_is_none(text: str) -> None:
    assert parse_tags(text, DURATION) is None


@pytest.mark.parametrize("parse", [parse_tags, parse_lmms, parse_free])
@pytest.mark.parametrize("duration", [0.0, -1.0, math.nan, math.inf])
def test_parsers_reject_bad_duration(parse, duration: float) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse("<answer>1 to 2</answer>", duration)


@pytest.mark.parametrize(
    ("text", "free", "lmms"),
    [
        # where vidrl's reader and lmms-eval's part ways (free reads more; never compare it
        # with published tables)
        ("start at 3s and end at 7s", (3.0, 7.0), None),  # one sentence, numbers paired
        ("It occurs from 4 seconds to 9 seconds.", (4.0, 9.0), None),  # unit on the left
        ("From 0:07.5 to 0:12", (7.5, 12.0), (0.0, 7.5)),  # fractions of a clock second
        ("It happens at 3 seconds - 7 seconds", (3.0, 7.0), None),  # "seconds" before "-"
    ],
)
def test_free_and_lmms_differ_where_documented(text: str, free, lmms) -> None:
    assert parse_free(text, DURATION) == free
    assert parse_lmms(text, DURATION) == lmms


def test_parser_names() -> None:
    expected = {"tags": parse_tags, "lmms": parse_lmms, "free": parse_free}
    assert expected == INTERVAL_PARSERS


# --- option letters: what each parse mode reads -------------------------------------------------
@pytest.mark.parametrize(
    ("text", "tags", "free", "lmms"),
    [
        ("<answer>C</answer>", "C", "C", "C"),
        ("<answer>(C)</answer>", "C", "C", "C"),
        ("C) a red square", None, "C", "C"),  # no <answer>: only the free-text modes read it
        # forms real models write: read by tags and free, not by lmms (its reading is frozen)
        ("<answer>[C]</answer>", "C", "C", None),
        ("<answer>C - a red square</answer>", "C", "C", None),
        ("<think>It is red.</think><answer>The answer is [C]</answer>", "C", "C", None),
        ("[C]", None, "C", None),
        ("C - a red square", None, "C", None),
        ("C \u2013 A red square", None, "C", None),
        # look-alikes naming two options: no letter anywhere
        ("<answer>[A] or [C]</answer>", None, None, None),
        ("<answer>[A][C]</answer>", None, None, None),
        ("<answer>A - C</answer>", None, None, None),
        ("<answer>A - C - a red square</answer>", None, None, None),
        ("<answer>C - A or B</answer>", None, None, None),
        ("[A] or [C]", None, None, None),
        ("<answer>[D]</answer>", None, None, None),  # only 3 options
    ],
)
def test_option_letter_by_parse_mode(text: str, tags, free, lmms) -> None:
    for parse, expected in (("tags", tags), ("free", free), ("lmms", lmms)):
        scored = score_prediction(MCQ, text, parse)
        assert (parse, scored.parsed, scored.unparsed) == (parse, expected, expected is None)
        assert scored.score == float(expected == "C")
