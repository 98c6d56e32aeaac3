"""Answer formats: parsing by hand-written cases, rendering, and parse(render(x)) == x."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vidrl.data.answers import (
    extract_answer,
    format_seconds,
    parse_boxes,
    parse_glue,
    parse_interval,
    parse_letter,
    render_answer,
    render_gqa,
    render_mcq,
    render_response,
    render_track,
    render_tvg,
    wrap_answer,
)
from vidrl.data.sample import Sample

# Values with at most 2 (seconds) or 3 (box) decimals survive rendering exactly.
seconds = st.integers(0, 10**6).map(lambda c: c / 100)
unit_coords = st.integers(0, 1000).map(lambda c: c / 1000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer> B </answer>", "B"),
        ("<answer>A</answer> then <answer>C</answer>", "C"),  # the last block
        ("<answer>a<answer>b</answer>", "b"),  # innermost opening before the last close
        ("<answer>a</answer> junk </answer>", "a"),  # a stray closing tag is ignored
        ("<answer></answer>", ""),
        ("<answer>unclosed", None),
        ("</answer><answer>", None),
        ("no tags", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('{"start_time": "12.5", "end_time": "20.25"}', (12.5, 20.25)),
        ('{"start_time": 3, "end_time": 4.5}', (3.0, 4.5)),  # unquoted numbers accepted
        ('{"start_time": "20", "end_time": "10"}', (20.0, 10.0)),  # reversed: returned raw
        ('{"start_time": "-1", "end_time": "5"}', (-1.0, 5.0)),
        ('{"start_time": NaN, "end_time": 5}', None),
        ('{"start_time": "nan", "end_time": "5"}', None),
        ('{"start_time": 1e400, "end_time": 5}', None),  # overflows to inf
        ('{"start_time": "1e3", "end_time": "5"}', None),  # decimal strings only
        ('{"start_time": true, "end_time": 5}', None),
        ('{"start_time": "1"}', None),
        ("[1, 2]", None),
        ('It is {"start_time": "1", "end_time": "2"}', None),  # json style: whole answer
        ("[" * 100_000, None),  # too deep for the JSON decoder: caught
    ],
)
def test_parse_interval_json(answer: str, expected: tuple[float, float] | None) -> None:
    assert parse_interval(answer, "json") == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("12.5 to 20", (12.5, 20.0)),
        ("from 1 to 2, no, from 3.5 and 4.", (3.5, 4.0)),  # the last match; "4." is 4
        ("3 TO 4", (3.0, 4.0)),  # case-insensitive as VideoChat-R1
        ("20 to 10", (20.0, 10.0)),
        ("12.5  to 20", None),  # exactly one space, as their regex
        ("12.5 - 20", None),
        ("9" * 400 + " to 1", None),  # overflows to inf
    ],
)
def test_parse_interval_to(answer: str, expected: tuple[float, float] | None) -> None:
    assert parse_interval(answer, "to") == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('{"start_time": "1", "end_time": "2"}', (1.0, 2.0)),
        ('The event: {"start_time": "1", "end_time": "2"}.', (1.0, 2.0)),  # embedded object
        ('{"start_time": "1", "end_time": "2"} or 5 to 6', (1.0, 2.0)),  # json wins over "to"
        ("5 to 6, i.e. 7 - 8", (5.0, 6.0)),  # "to" wins over "S - E"
        ("between 7.5 - 8.25 seconds", (7.5, 8.25)),
        ("7.5\u20138", (7.5, 8.0)),  # en dash
        ("no numbers", None),
    ],
)
def test_parse_interval_any(answer: str, expected: tuple[float, float] | None) -> None:
    assert parse_interval(answer, "any") == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("B) a man opens the door", "B"),
        ("(B) A man opens the door", "B"),  # option text starting with a capital
        ("The answer is B", "B"),
        ("The correct answer is: (C).", "C"),
        ("Answer: D", "D"),
        ("Option B", "B"),
        ("**B**", "B"),
        # forms real models write: square brackets, and the letter, a spaced dash, the option
        ("[C]", "C"),
        ("[C].", "C"),
        ("[C] a red square", "C"),
        ("The answer is [C]", "C"),
        ("C - a red square", "C"),
        ("C - A red square", "C"),  # option text starting with a capital
        ("C \u2013 a red square", "C"),  # en dash
        ("C \u2014 a red square", "C"),  # em dash
        ("Answer: C - a red square", "C"),
        ("(C) - a red square", "C"),
        ("", None),
        ("A or B", None),
        ("A, B", None),
        ("A/B", None),
        ("(A) or (B)", None),
        ("A. or B.", None),
        ("(A)(B)", None),
        ("A) B)", None),
        ("AB", None),
        ("A man opens the door", None),  # an article is not an option
        ("b", None),
        ("I think B", None),
        # their look-alikes that name two options, or no option at all
        ("[A] or [B]", None),
        ("[A][B]", None),
        ("[A], [B]", None),
        ("[A]/[B]", None),
        ("[A] or B", None),
        ("(A) [B]", None),
        ("[A or B]", None),
        ("[AB]", None),
        ("[c]", None),
        ("A - B", None),  # a range of options
        ("A \u2013 B", None),
        ("A - B - C", None),
        ("A - [B]", None),
        ("A - (B).", None),
        ("C - A or B", None),
        ("[A] - [B]", None),
        ("A-B", None),  # no spaces: not the dash form
        ("C -", None),  # nothing after the dash
        ("A man - walks", None),
    ],
)
def test_parse_letter(answer: str, expected: str | None) -> None:
    assert parse_letter(answer) == expected


@pytest.mark.parametrize("answer", ["[C]", "C - a red square", "[C] a red square"])
def test_parse_letter_basic_forms_leave_the_model_forms_unread(answer: str) -> None:
    assert parse_letter(answer) == "C"
    assert parse_letter(answer, forms="basic") is None
    assert parse_letter("C) a red square", forms="basic") == "C"


def test_parse_letter_respects_number_of_options() -> None:
    assert parse_letter("B", num_options=2) == "B"
    assert parse_letter("C", num_options=2) is None  # C is index 2, only A and B exist
    assert parse_letter("A", num_options=0) is None
    assert parse_letter("[C]", num_options=2) is None
    assert parse_letter("C - a red square", num_options=2) is None


def test_parse_glue() -> None:
    assert parse_glue("<answer>B</answer><glue>[(1, 2.5), (4.25, 6)]</glue>") == [
        (1.0, 2.5),
        (4.25, 6.0),
    ]
    assert parse_glue("<glue>[[1, 2], [3, 4]]</glue>") == [(1.0, 2.0), (3.0, 4.0)]
    assert parse_glue("<glue>[(1, 2)]</glue> <glue>[(5, 3)]</glue>") == [(5.0, 3.0)]  # last, raw
    assert parse_glue("<glue>[(1, 1e999)]</glue>") == []  # a non-finite pair spoils the list
    assert parse_glue("<glue></glue>") == []
    assert parse_glue("[(1, 2)]") == []  # no glue block


def test_parse_boxes() -> None:
    assert parse_boxes("[[0.1, 0.2, 0.3, 0.4], (0, 0, 1, 1)]") == [
        (0.1, 0.2, 0.3, 0.4),
        (0.0, 0.0, 1.0, 1.0),
    ]
    assert parse_boxes("[0.5, -1, 2, 0.75]") == [(0.5, -1.0, 2.0, 0.75)]  # raw, not clamped
    assert parse_boxes("[[0.1, 0.2, 0.3]]") is None
    assert parse_boxes("[[0.1, 0.2, 0.3, 1e999]]") is None
    assert parse_boxes("") is None


def test_renderers_write_the_documented_strings() -> None:
    assert render_tvg(12, 20.25) == '{"start_time": "12.0", "end_time": "20.25"}'
    assert render_tvg(1.5, 3, style="to") == "1.5 to 3.0"
    assert render_mcq("C") == "C"
    assert render_gqa("B", [(5, 20.5)]) == "<answer>B</answer><glue>[(5.0, 20.5)]</glue>"
    assert render_track([(0.1, 0.25, 0.125, 1)]) == "[[0.1, 0.25, 0.125, 1.0]]"
    tail = wrap_answer("C")
    assert tail == "<answer>C</answer>"
    assert render_response(tail, think="t") == "<think>t</think>\n<answer>C</answer>"
    assert format_seconds(-0.0) == "0.0"
    assert format_seconds(3.14159) == "3.14"


def test_render_answer_gives_the_tagged_tail_of_every_task() -> None:
    def sample(task: str, **fields: object) -> Sample:
        return Sample(id="s", task=task, video="v", question="q", duration=30.0, **fields)  # type: ignore[arg-type]

    tvg = sample("tvg", timestamps=((1.5, 3.0),))
    assert render_answer(tvg) == '<answer>{"start_time": "1.5", "end_time": "3.0"}</answer>'
    assert render_answer(tvg, tvg_style="to") == "<answer>1.5 to 3.0</answer>"
    assert render_answer(sample("mcq", answer="C")) == "<answer>C</answer>"
    gqa = sample("gqa", answer="B", timestamps=((1.0, 2.0),))
    assert render_answer(gqa) == "<answer>B</answer><glue>[(1.0, 2.0)]</glue>"  # glue outside
    track = sample("track", boxes=((0.0, 0.5, 0.25, 1.0),))
    assert render_answer(track) == "<answer>[[0.0, 0.5, 0.25, 1.0]]</answer>"


@pytest.mark.parametrize("letter", ["", "b", "AB", "1"])
def test_render_rejects_non_letters(letter: str) -> None:
    with pytest.raises(ValueError, match="option letter"):
        render_mcq(letter)


@settings(max_examples=200, deadline=None)
@given(start=seconds, end=seconds, style=st.sampled_from(["json", "to"]))
def test_tvg_round_trip(start: float, end: float, style: str) -> None:
    answer = render_tvg(start, end, style=style)  # type: ignore[arg-type]
    assert parse_interval(answer, style) == (start, end)  # type: ignore[arg-type]
    assert parse_interval(answer, "any") == (start, end)


@settings(max_examples=100, deadline=None)
@given(letter=st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
def test_mcq_round_trip(letter: str) -> None:
    assert parse_letter(render_mcq(letter)) == letter


@settings(max_examples=100, deadline=None)
@given(
    letter=st.sampled_from("ABCDE"),
    intervals=st.lists(st.tuples(seconds, seconds), max_size=5),
)
def test_gqa_round_trip(letter: str, intervals: list[tuple[float, float]]) -> None:
    tail = render_gqa(letter, intervals)
    answer = extract_answer(tail)
    assert answer is not None and parse_letter(answer) == letter
    assert parse_glue(tail) == intervals


@settings(max_examples=100, deadline=None)
@given(boxes=st.lists(st.tuples(unit_coords, unit_coords, unit_coords, unit_coords), min_size=1))
def test_track_round_trip(boxes: list[tuple[float, float, float, float]]) -> None:
    assert parse_boxes(render_track(boxes)) == boxes


def test_parsers_stay_linear_on_adversarial_input() -> None:
    # Backtracking versions of these patterns take minutes on such input (quadratic in the
    # run length); the linear ones take milliseconds, so a 5 s bound cannot be flaky.
    digits, tags = "9" * 200_000, "<answer>" * 50_000 + "<glue>(" * 20_000
    began = time.perf_counter()
    assert parse_interval(digits + "x", "any") is None
    assert parse_interval(digits, "to") is None
    assert parse_letter("(" * 100_000) is None
    assert parse_letter("C" + " " * 100_000 + "-") is None
    assert parse_letter("[A] B" + " " * 100_000 + "x") == "A"
    assert extract_answer(tags) is None
    assert parse_glue(tags) == []
    assert parse_boxes("[" + "1," * 100_000) is None
    assert time.perf_counter() - began < 5.0


RANGE_PIECES = ["1", "23", ".", "4.5", " ", "  ", "to", "and", "TO", " to ", " and ", "x", "-"]


@settings(max_examples=400, deadline=None)
@given(pieces=st.lists(st.sampled_from(RANGE_PIECES), max_size=14))
def test_to_style_equals_videochat_r1_regex(pieces: list[str]) -> None:
    # The linear pattern must read exactly what VideoChat-R1's backtracking one reads.
    text = "".join(pieces)
    matches = re.findall(r"(\d+\.?\d*) (to|and) (\d+\.?\d*)", text, re.IGNORECASE)
    expected = (float(matches[-1][0]), float(matches[-1][2])) if matches else None
    assert parse_interval(text, "to") == expected
