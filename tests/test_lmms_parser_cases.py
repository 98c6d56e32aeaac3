"""`parse_lmms` and `lmms_metrics` against lmms-eval's charades_sta, case by case.

Every expected value was worked out by hand from reading lmms-eval's `extract_time`, `iou`
and `_temporal_grounding_compute_metrics` (lmms_eval/tasks/charades_sta/utils.py); the
comment on each case names the rule or quirk it pins down.
"""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vidrl.evaluation.metrics import grounding_metrics, temporal_iou
from vidrl.evaluation.parsing import lmms_metrics, parse_lmms
from vidrl.evaluation.report import compute_metrics

DURATION = 30.0

READ = [
    # "to" becomes "-", then rule 2 (an `a - b` number range)
    ("The event happens in 12.5 - 20 seconds.", (12.5, 20.0)),
    ("The event happens from 12.5 to 20 seconds.", (12.5, 20.0)),
    ("12.5 to 20", (12.5, 20.0)),  # no keyword sentence: every sentence is a candidate
    ("15to20", (15.0, 20.0)),  # every "to", not only the word
    ("It happens 3 TO 9.", (3.0, 9.0)),  # lowercased first
    ("It happens in 12.5-20.25s", (12.5, 20.25)),
    ("It happens 2 \u2013 6", (2.0, 6.0)),  # en dash
    ("It happens from -3 to 5", (3.0, 5.0)),  # no signs: "-3 - 5" reads 3 - 5
    ("2023-01-05 is when it happens", (1.0, 2023.0)),  # no word boundary asked; swapped
    # candidates: sentences holding "start", "end" or "happen", split on ! ? and newlines
    ("The door opens at 3.\nIt happens at 5 - 8.", (5.0, 8.0)),
    ("I watched 1 - 2 clips!\nThe door opening happens from 5 to 8.", (5.0, 8.0)),
    ("Clip 1 - 2 is long. It happens 5 - 8", (1.0, 2.0)),  # "." splits nothing
    ("It happens 1 - 2? No: 5 - 8", (1.0, 2.0)),  # "?" splits; the second has no keyword
    ("We spend 2 - 4 minutes here.\nIt is 6 - 9.", (2.0, 4.0)),  # "spend" holds "end"
    ("It happened 7 - 9 s.", (7.0, 9.0)),  # "happened" holds "happen"
    ("2 - 4\n6 - 9", (2.0, 4.0)),  # no keyword anywhere: the first range of all
    ("It starts at 0:05\nIt happens 7 - 9", (7.0, 9.0)),  # rule 2 anywhere beats rule 3
    # rule 1: clock ranges, h:mm:ss or m:ss, before any number range
    ("The event happens in 00:01:05 - 00:01:10.", (65.0, 70.0)),
    ("It starts 1:05 - 1:10", (65.0, 70.0)),
    ("1:05 \u2013 1:10", (65.0, 70.0)),
    ("It happens 1:00:00 - 1:00:30", (3600.0, 3630.0)),
    ("It happens 2 - 3, i.e. 0:05 - 0:09", (5.0, 9.0)),  # clock range first, same sentence
    ("It happens 0:05 - 0:09.5", (5.0, 9.0)),  # the fraction is not part of a clock
    ("It happens 0:07.5 - 0:12", (0.0, 7.5)),  # no clock range: rule 2 reads "07.5 - 0"
    # rule 3: the first two clock times of all candidates together
    ("The event starts at 00:00:18 and ends at 00:00:23.", (18.0, 23.0)),
    ("Start: 0:05\nEnd: 0:09", (5.0, 9.0)),
    # rule 4: the first number of each candidate sentence, from the first two that have one
    ("Starting time: 0.8 seconds\nEnding time: 1.1 seconds", (0.8, 1.1)),
    ("It ends at 9.\nIt starts at 4.", (4.0, 9.0)),  # swapped
    ("starts at 2 (frame 50)\nends at 6", (2.0, 6.0)),  # only the first number counts
    ("Start 1\nstart 2\nend 3", (1.0, 2.0)),  # only the first pair counts
    ("It starts at 3.5s.\nIt ends at 7.", (3.0, 7.0)),  # "3.5s": only "3" stands alone
    ("There are 2 people!\n3 chairs.", (2.0, 3.0)),  # no keyword: all sentences
    ('{\n"start_time": "4",\n"end_time": "8"\n}', (4.0, 8.0)),  # JSON over several lines
    # rule 5: an "s" may stand between the first number and the dash
    ("It happens at 3s - 7s", (3.0, 7.0)),
    ("It happens 4 s-9 s", (4.0, 9.0)),
    # the echoed example of an older prompt is deleted, but only as written with "-"
    ("A specific example is : 20.8 - 30.0 seconds. It happens in 4 - 6.", (4.0, 6.0)),
    ("A specific example is : 20.8 to 30.0 seconds. It happens in 4 - 6.", (20.8, 30.0)),
    # the current prompt's example is not deleted
    ("For example, the event happens in the 24.3 - 30.4 seonds. It happens in 4 - 6", (24.3, 30.4)),
    # end <= start is swapped; nothing is clamped to the video
    ("It happens 20 - 12.5", (12.5, 20.0)),
    ("It happens 5 - 5", (5.0, 5.0)),
    ("It happens from 25 to 45 seconds.", (25.0, 45.0)),
    # tags are plain text to it
    ("<think>The clip is 30 s long.</think>\n<answer>5 to 9</answer>", (5.0, 9.0)),
    ("It happens \u0663 - \u0665", (3.0, 5.0)),  # \d and float() take any decimal digit
]

UNREAD = [
    "",
    "I cannot tell.",
    "The person opens the door.",
    "There are 2 people and 3 chairs.",  # one sentence: rule 4 needs two
    "The start time for this event is 0 seconds, and the end time is 12 seconds.",  # one sentence
    "start at 3s and end at 7s",  # "3s" is no standalone number, and no dash
    "It happens 10 seconds to 20 seconds",  # rule 5 allows "s", not "seconds"
    "Start_5\nend_6",  # "_" is a word character: no word boundary before the digit
    "It starts at 0:05 and lasts 4 seconds",  # one clock time, one sentence
    '<answer>{"start_time": "4", "end_time": "8"}</answer>',  # one-line JSON: one sentence
    "It happens from 1" + "0" * 400 + " to 5.",  # departure: inf is None (lmms-eval: IoU 0)
]


@pytest.mark.parametrize(("text", "expected"), READ)
def test_parse_lmms_reads_as_lmms_eval(text: str, expected: tuple[float, float]) -> None:
    assert parse_lmms(text, DURATION) == expected


@pytest.mark.parametrize("text", UNREAD)
def test_parse_lmms_reads_nothing_where_lmms_eval_reads_nothing(text: str) -> None:
    assert parse_lmms(text, DURATION) is None


def test_there_are_enough_cases() -> None:
    assert len(READ) + len(UNREAD) >= 40


# --- lmms_metrics: their percentages, thresholds without slack -------------------------------
def test_lmms_metrics_hand_worked() -> None:
    metrics = lmms_metrics([0.3, 0.5, 0.7, 0.0])
    # mIoU = 1.5 * 100 / 4; each threshold reached exactly counts
    assert metrics == {"mIoU": 37.5, "R1@0.3": 75.0, "R1@0.5": 50.0, "R1@0.7": 25.0, "n": 4}


def test_lmms_metrics_counts_no_rounding_slack() -> None:
    # pred (0, 0.3) vs gt (0.1, 0.4) is 0.5 in real numbers, 0.49999999999999994 in floats:
    # lmms-eval's `>=` misses it, vidrl's own metric (1e-9 slack) counts it.
    iou = temporal_iou((0.0, 0.3), (0.1, 0.4))
    assert lmms_metrics([iou])["R1@0.5"] == 0.0
    assert grounding_metrics([iou])["R1@0.5"] == 100.0


def test_lmms_metrics_empty() -> None:
    assert lmms_metrics([]) == {"mIoU": 0.0, "R1@0.3": 0.0, "R1@0.5": 0.0, "R1@0.7": 0.0, "n": 0}


def test_vidrl_metrics_lmms_uses_their_metric_and_counts_unparsed_as_zero() -> None:
    rows = [
        {"prediction": "It happens 0 - 0.3", "timestamps": [0.1, 0.4], "duration": 30.0},
        {"prediction": "It happens 4 - 8", "timestamps": [4.0, 8.0], "duration": 30.0},
        {"prediction": "no idea", "timestamps": [4.0, 8.0], "duration": 30.0},
    ]
    lmms = compute_metrics(rows, "lmms")
    assert (lmms["n"], lmms["unparsed"]) == (3, 1)
    assert lmms["mIoU"] == (temporal_iou((0.0, 0.3), (0.1, 0.4)) + 1.0 + 0.0) * 100 / 3
    assert lmms["R1@0.5"] == pytest.approx(100 / 3)  # only the exact match
    assert lmms["tasks"]["tvg"]["R1@0.5"] == lmms["R1@0.5"]
    assert compute_metrics(rows, "free")["R1@0.5"] == pytest.approx(200 / 3)  # with slack


# --- totality and speed -----------------------------------------------------------------------
pieces = st.sampled_from(
    ["to", " to ", "-", " - ", "\u2013", ":", ".", " ", "\n", "!", "?", "s", "start", "ends",
     "happen", "photo", "0", "5", "12", "05", "3.5", "0:07", "00:01:05", "\u0663", "_", "a",
     "a specific example is : 20.8 - 30.0 seconds", "<answer>", "9" * 320]
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(parts=st.lists(pieces, max_size=30), noise=st.text(max_size=40))
def test_parse_lmms_is_total(parts: list[str], noise: str) -> None:
    for text in ("".join(parts), noise, "".join(parts) + noise):
        pair = parse_lmms(text, DURATION)
        assert pair is None or (all(map(math.isfinite, pair)) and pair[0] <= pair[1])


def test_parse_lmms_is_linear_on_adversarial_text() -> None:
    # Their range pattern without a word boundary is quadratic on long digit runs; ours
    # must not be (the lookbehind changes no first match).
    huge = ["1" * 200_000, "1." * 100_000, "start " + "1.1" * 60_000, "12:34 " * 30_000]
    began = time.perf_counter()
    for text in huge:
        parse_lmms(text, DURATION)
    assert time.perf_counter() - began < 5.0
