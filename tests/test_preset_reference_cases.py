"""The temporal_r1 and videochat_r1 presets against their papers' reward code, case by case.

Each row is (sample, response, ours, theirs): `theirs` is what the reference returns, worked
out by hand from reading Temporal-R1's `verl/utils/reward_score/tvg.py` (`tvg_compute_score`)
and VideoChat-R1's `src/open_r1/grpo_tg.py`, `grpo_qa.py` and `grpo_gqa.py` (their rewards
summed); SAME where it equals ours. Where it differs, their code is wrong by its own intent
and the preset's docstring lists the case.
"""

from __future__ import annotations

import ast
import functools
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reward_samples import GQA, MCQ, TVG

from vidrl.data.answers import extract_answer, find_block, parse_interval, parse_videochat_glue
from vidrl.data.sample import Sample
from vidrl.rewards import builtin
from vidrl.rewards.compose import ComposedReward
from vidrl.rewards.config import RewardsConfig, build_reward
from vidrl.rewards.types import RewardInput

SAME = object()
THINK = "<think>t</think>"


def json_answer(start: str, end: str) -> str:
    return f'<answer>{{"start_time": {start}, "end_time": {end}}}</answer>'


# Against (10, 20): (12, 22) overlaps 8 of a hull of 12.
IOU_12_22 = 2 / 3
GOOD = THINK + json_answer('"12"', '"22"')

# temporal_r1 = 0.5 * IoU (times / duration) + 0.5 * format
TEMPORAL_R1 = [
    (TVG, GOOD, 0.5 + 0.5 * IOU_12_22, SAME),
    (
        TVG,
        THINK + '\n<answer>\n{ "start_time" : "12" , "end_time" : "22" }\n</answer>',
        0.5 + 0.5 * IOU_12_22,
        SAME,
    ),
    (
        TVG,
        "<think>line 1\nline 2</think>" + json_answer('"12"', '"22"'),
        0.5 + 0.5 * IOU_12_22,
        SAME,
    ),  # DOTALL
    (
        TVG,
        "<think>a</think>b</think>" + json_answer('"12"', '"22"'),
        0.5 + 0.5 * IOU_12_22,
        SAME,
    ),  # lazy .*? spans
    (TVG, GOOD + "\n", 0.5 * IOU_12_22, SAME),  # format on the raw text: a newline after fails
    (TVG, " " + GOOD, 0.5 * IOU_12_22, SAME),
    (TVG, json_answer('"12"', '"22"'), 0.5 * IOU_12_22, SAME),  # no think: format 0
    # IoU reads float() of the JSON values; the format wants quoted digits and dots only
    (TVG, THINK + json_answer("12", "22"), 0.5 * IOU_12_22, SAME),  # unquoted numbers
    (TVG, THINK + json_answer("10", "20.0"), 0.5, SAME),
    (TVG, THINK + json_answer('"1.2e1"', '"2.2e1"'), 0.5 * IOU_12_22, SAME),  # exponent strings
    (TVG, THINK + json_answer('"1.000e+01"', '"2.000e+01"'), 0.5, SAME),
    (TVG, THINK + json_answer("1.0e1", "2.0e1"), 0.5, SAME),  # exponent numbers
    (TVG, THINK + json_answer('"1_2"', '"2_2"'), 0.5 * IOU_12_22, SAME),  # underscores
    (TVG, THINK + json_answer('" 12 "', '"22"'), 0.5 * IOU_12_22, SAME),  # spaces inside quotes
    (TVG, THINK + json_answer('"+12"', '"22"'), 0.5 * IOU_12_22, SAME),
    (TVG, THINK + json_answer("true", '"20"'), 0.5 * 10 / 19, SAME),  # true is 1 s: (1, 20)
    (TVG, THINK + json_answer('"12."', '"22"'), 0.5 + 0.5 * IOU_12_22, SAME),  # "12." is digits and dots
    (TVG, THINK + json_answer('"\\u0031\\u0032"', '"22"'), 0.5 * IOU_12_22, SAME),  # JSON escapes
    (TVG, THINK + json_answer('"\u0661\u0662"', '"22"'), 0.5 + 0.5 * IOU_12_22, SAME),  # any \d digit
    (TVG, THINK + json_answer('"1.2.3"', '"22"'), 0.5, SAME),  # the format passes, float fails
    # which <answer> block: the FIRST one
    (TVG, GOOD + json_answer('"10"', '"20"'), 0.5 * IOU_12_22, SAME),  # second block ignored
    (TVG, THINK + "<answer>junk</answer>" + json_answer('"10"', '"20"'), 0.0, SAME),
    (TVG, THINK + "<answer>" + json_answer('"10"', '"20"'), 0.0, SAME),  # "<answer>{...}" is no JSON
    (
        TVG,
        "<think>maybe " + json_answer('"0"', '"30"') + "</think>" + json_answer('"10"', '"20"'),
        0.5 + 0.5 / 3,  # the block inside the thinking is the first: (0, 30) -> 1/3
        SAME,
    ),
    (
        TVG,
        THINK + '<answer>\u00a0{"start_time": "12", "end_time": "22"}\u00a0</answer>',
        0.5 + 0.5 * IOU_12_22,
        SAME,
    ),
    # what cannot be read scores IoU 0
    (TVG, THINK + "<answer>12 to 22</answer>", 0.0, SAME),
    (TVG, THINK + "<answer></answer>", 0.0, SAME),
    (TVG, THINK + '<answer>It is {"start_time": "12", "end_time": "22"}</answer>', 0.0, SAME),
    (TVG, THINK + "<answer>[12, 22]</answer>", 0.0, SAME),
    (TVG, THINK + '<answer>{"start_time": "12"}</answer>', 0.0, SAME),
    (TVG, THINK + json_answer("null", '"22"'), 0.0, SAME),
    (
        TVG,
        THINK + '<answer>{"start_time": "0", "start_time": "12", "end_time": "22"}</answer>',
        0.5 * IOU_12_22,
        SAME,
    ),
    (TVG, "no tags at all", 0.0, SAME),
    (TVG, THINK + "<answer>" + "[" * 100_000 + "</answer>", 0.0, SAME),  # too deep: caught
    # reversed, point, NaN and inf: IoU 0 in both (theirs by its min/max order or by raising)
    (TVG, THINK + json_answer('"22"', '"12"'), 0.5, SAME),
    (TVG, THINK + json_answer('"15"', '"15"'), 0.5, SAME),
    (TVG, THINK + json_answer('"nan"', '"20"'), 0.0, SAME),
    (TVG, THINK + json_answer("NaN", "20"), 0.0, SAME),
    (TVG, THINK + json_answer('"10"', '"inf"'), 0.0, SAME),
    (TVG, THINK + json_answer("-Infinity", "20"), 0.0, SAME),
    (TVG, THINK + json_answer("1e400", "20"), 0.0, SAME),
    (TVG, THINK + json_answer("1" + "0" * 400, "20"), 0.0, SAME),  # int too big for float
    # departures: times outside the video are clamped to [0, 30] first
    (TVG, THINK + json_answer('"12"', '"45"'), 0.5 + 0.5 * 0.4, 0.5 + 0.5 * 8 / 35),
    (TVG, THINK + json_answer("-5", "15"), 0.5 * 0.25, 0.5 * 0.2),  # (0, 15): 5 / 20
    (TVG, THINK + json_answer('"0"', '"1000"'), 0.5 + 0.5 / 3, 0.5 + 0.5 * 0.01),
    (TVG, THINK + json_answer('"40"', '"50"'), 0.5, SAME),  # wholly after the end: 0 both
    # mcq: 0.5 * format + 0.5 * accuracy of the first answer block
    (MCQ, THINK + "<answer>B</answer>", 1.0, SAME),
    (MCQ, THINK + "<answer>A</answer><answer>B</answer>", 0.5, SAME),
    (MCQ, THINK + "<answer>B</answer>\n", 0.5, SAME),
]

# videochat_r1 = format + IoU (tvg, seconds) | + accuracy (mcq) | + accuracy + glue IoU (gqa)
VIDEOCHAT_R1 = [
    (TVG, THINK + "<answer>12 to 22</answer>", 1 + IOU_12_22, SAME),
    (TVG, THINK + "<answer>12 and 22</answer>", 1 + IOU_12_22, SAME),
    (TVG, THINK + "<answer>12 TO 22</answer>", 1 + IOU_12_22, SAME),  # case-insensitive
    (TVG, THINK + "<answer>The event happens from 12 to 22 seconds.</answer>", 1 + IOU_12_22, SAME),
    (TVG, THINK + "<answer>1 to 2, no: 12 to 22</answer>", 1 + IOU_12_22, SAME),  # the last match
    (TVG, THINK + "<answer>12.5 to 20</answer>", 1.75, SAME),  # 7.5 / 10
    (TVG, THINK + "<answer>12. to 22.</answer>", 1 + IOU_12_22, SAME),
    (TVG, THINK + "<answer>-5 to 15</answer>", 1 + 1 / 3, SAME),  # no sign: (5, 15)
    (TVG, THINK + "<answer>\u0661\u0662 to \u0662\u0662</answer>", 1 + IOU_12_22, SAME),
    (TVG, THINK + "<answer>12  to 22</answer>", 1.0, SAME),  # exactly one space each side
    (TVG, THINK + "<answer>12\tto 22</answer>", 1.0, SAME),
    (TVG, THINK + "<answer>12 to22</answer>", 1.0, SAME),
    (TVG, THINK + "<answer>12 - 22</answer>", 1.0, SAME),
    (TVG, THINK + '<answer>{"start_time": "12", "end_time": "22"}</answer>', 1.0, SAME),
    (TVG, THINK + "<answer>12 to 1e3</answer>", 1.0, SAME),  # reads (12, 1): reversed
    (TVG, THINK + "<answer>22 to 12</answer>", 1.0, SAME),  # reversed: 0, their own check
    (TVG, THINK + "<answer>15 to 15</answer>", 1.0, SAME),
    (TVG, THINK + "<answer>1" + "0" * 400 + " to 5</answer>", 1.0, SAME),  # inf start: reversed
    (TVG, THINK + "<answer>5 to 1" + "0" * 400 + "</answer>", 1.0, SAME),  # inf end: IoU 0
    # which block: the last of a left-to-right scan
    (TVG, THINK + "<answer>10 to 20</answer><answer>12 to 22</answer>", 1 + IOU_12_22, SAME),
    (TVG, THINK + "<answer>10 to 20</answer><answer>none</answer>", 1.0, SAME),
    (TVG, THINK + "<answer>10 to 20<answer>none</answer>", 2.0, SAME),  # one block, nested opening
    (TVG, "<think>12 to 22</think><answer>soon</answer>", 1.0, SAME),
    # format: the tag chain on the stripped response
    (TVG, " \n" + THINK + "<answer>12 to 22</answer>\n", 1 + IOU_12_22, SAME),
    (TVG, "<answer>12 to 22</answer>", IOU_12_22, SAME),
    (TVG, THINK + "<answer>12 to 22", 0.0, SAME),  # no complete block
    # departure: times outside the video are clamped to [0, 30]
    (TVG, THINK + "<answer>0 to 1000</answer>", 1 + 1 / 3, 1 + 0.01),
    (TVG, THINK + "<answer>25 to 40</answer>", 1.0, SAME),  # (25, 30): no overlap either way
    # mcq: format + accuracy of the FIRST answer block
    (MCQ, THINK + "<answer>B</answer>", 2.0, SAME),
    (MCQ, THINK + "<answer>(B)</answer>", 2.0, SAME),
    (MCQ, THINK + "<answer>The answer is B</answer>", 2.0, SAME),
    (MCQ, THINK + "<answer>B. the man opens the door</answer>", 2.0, SAME),
    (MCQ, THINK + "<answer>A</answer><answer>B</answer>", 1.0, SAME),  # the first block
    (MCQ, THINK + "<answer>B</answer><answer>A</answer>", 2.0, SAME),
    (MCQ, THINK + "<answer>b</answer>", 1.0, SAME),  # capitals only
    (MCQ, "<answer>B</answer>", 1.0, SAME),
    # letter forms real models write, read as theirs reads them (the first capital A-G)
    (MCQ, THINK + "<answer>[B]</answer>", 2.0, SAME),
    (MCQ, THINK + "<answer>B - b</answer>", 2.0, SAME),
    (MCQ, THINK + "<answer>The answer is [B]</answer>", 2.0, SAME),
    (MCQ, THINK + "<answer>[A]</answer>", 1.0, SAME),
    (MCQ, THINK + "<answer>A - b</answer>", 1.0, SAME),
    # departures: one unambiguous letter, where theirs takes the first capital A-G anywhere
    (MCQ, THINK + "<answer>B or C</answer>", 1.0, 2.0),
    (MCQ, THINK + "<answer>[B] or [C]</answer>", 1.0, 2.0),
    (MCQ, THINK + "<answer>B - C</answer>", 1.0, 2.0),  # a range of options
    (MCQ, THINK + "<answer>Answer: B</answer>", 2.0, 1.0),  # theirs: the A of "Answer"
    (MCQ, THINK + "<answer>Best option: B</answer>", 2.0, SAME),  # theirs: the B of "Best"
    (MCQ, THINK + "<answer>Best option: C</answer>", 1.0, 2.0),
    (MCQ, THINK + "<answer>I think B</answer>", 1.0, 2.0),
    # gqa: format (chain + first glue valid) + accuracy (first block) + IoU of the first glue
    (GQA, THINK + "<answer>B</answer><glue>[(5, 20)]</glue>", 2.5, SAME),  # (5, 20) vs (0, 15)
    (GQA, THINK + "<answer>B</answer>\n<glue>[(5,20),]</glue>", 2.5, SAME),  # trailing comma
    (GQA, THINK + "<answer>B</answer><glue>[(5,\n20)]</glue>", 2.5, SAME),
    (GQA, THINK + "<answer>B</answer><glue>[(5, 20)]\n</glue>", 2.5, SAME),  # `$` takes one "\n"
    (GQA, THINK + "<answer>B</answer><glue>[]</glue>", 2.0, SAME),  # valid, covers nothing
    (GQA, THINK + "<answer>B</answer><glue>[(3, 3)]</glue>", 2.0, SAME),
    (GQA, THINK + "<answer>B</answer><glue>[(5.0, 20.0), (0, 2)]</glue>", 2.6, SAME),  # 12 / 20
    (GQA, THINK + "<answer>B</answer><glue>[(0, 4), (2, 6)]</glue>", 2.4, SAME),  # merged (0, 6)
    (GQA, THINK + "<answer>[B]</answer><glue>[(5, 20)]</glue>", 2.5, SAME),
    (GQA, THINK + "<answer>B - b</answer><glue>[(5, 20)]</glue>", 2.5, SAME),
    (GQA, THINK + "<answer>maybe</answer><glue>[(5, 20)]</glue>", 1.5, SAME),  # answer unchecked
    (GQA, THINK + "<answer>A</answer><answer>B</answer><glue>[(5, 20)]</glue>", 1.5, SAME),
    (GQA, THINK + "<answer>B</answer><glue>[(5, 20)]</glue><glue>x</glue>", 2.5, SAME),
    (GQA, THINK + "<answer>B</answer><glue>x</glue><glue>[(5, 20)]</glue>", 1.0, SAME),
    (GQA, "<think><glue>[(5, 20)]</glue></think><answer>B</answer><glue>x</glue>", 2.5, SAME),
    # invalid glue: format 0 and IoU 0, accuracy still counts
    (GQA, THINK + "<answer>B</answer><glue>[(20, 5)]</glue>", 1.0, SAME),  # reversed
    (GQA, THINK + "<answer>B</answer><glue>[[5, 20]]</glue>", 1.0, SAME),  # square brackets
    (GQA, THINK + "<answer>B</answer><glue> [(5, 20)]</glue>", 1.0, SAME),  # not stripped
    (GQA, THINK + "<answer>B</answer><glue>[(5 , 20)]</glue>", 1.0, SAME),
    (GQA, THINK + "<answer>B</answer><glue>[(05, 20)]</glue>", 1.0, SAME),  # Python rejects 05
    (GQA, THINK + "<answer>B</answer><glue>[(0.5e1, 20)]</glue>", 1.0, SAME),
    (GQA, THINK + "<answer>B</answer><glue>[(5,\u00a020)]</glue>", 1.0, SAME),  # not Python space
    (GQA, THINK + "<answer>B</answer>", 1.0, SAME),  # no glue block
    # departure: glue times outside the video are clamped to [0, 30]
    (GQA, THINK + "<answer>B</answer><glue>[(5, 100)]</glue>", 2 + 1 / 3, 2.1),
]


@functools.cache
def preset(name: str) -> ComposedReward:
    return build_reward(RewardsConfig(preset=name))  # type: ignore[arg-type]


def total(name: str, sample: Sample, response: str) -> float | None:
    score = preset(name)([RewardInput(sample, response)])[0]
    return None if score is None else score.total


@pytest.mark.parametrize(("sample", "response", "ours", "theirs"), TEMPORAL_R1)
def test_temporal_r1_cases(sample: Sample, response: str, ours: float, theirs: object) -> None:
    assert total("temporal_r1", sample, response) == pytest.approx(ours, abs=1e-12)


@pytest.mark.parametrize(("sample", "response", "ours", "theirs"), VIDEOCHAT_R1)
def test_videochat_r1_cases(sample: Sample, response: str, ours: float, theirs: object) -> None:
    assert total("videochat_r1", sample, response) == pytest.approx(ours, abs=1e-12)


def test_there_are_enough_cases() -> None:
    assert len(TEMPORAL_R1) >= 40 and len(VIDEOCHAT_R1) >= 40


# --- the readers the presets switch on ------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "first", "last", "last_found"),
    [
        ("<answer>a</answer><answer>b</answer>", "a", "b", "b"),
        ("<answer>a<answer>b</answer>", "a<answer>b", "b", "a<answer>b"),
        ("<answer>a</answer> x </answer>", "a", "a", "a"),
        ("<answer>a</answer><answer>b", "a", "a", "a"),
        ("<answer>x<answer>a</answer><answer>b</answer>", "x<answer>a", "b", "b"),
        ("no tags", None, None, None),
    ],
)
def test_answer_blocks(text: str, first, last, last_found) -> None:
    assert [find_block(text, "answer", b) for b in ("first", "last", "last_found")] == [
        first,
        last,
        last_found,
    ]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('{"start_time": "5.000e-01", "end_time": "2"}', (0.5, 2.0)),
        ('{"start_time": true, "end_time": 2}', (1.0, 2.0)),
        ('{"start_time": " 1_0 ", "end_time": "+20"}', (10.0, 20.0)),
        ('{"start_time": "nan", "end_time": "2"}', None),
        ('{"start_time": [1], "end_time": "2"}', None),
        ('{"start_time": 1' + "0" * 400 + ', "end_time": 2}', None),
    ],
)
def test_float_numbers_read_as_python_float(answer: str, expected) -> None:
    assert parse_interval(answer, "json", numbers="float") == expected
    assert extract_answer(f" <answer> {answer} </answer>", "first") == answer


# An independent oracle of VideoChat-R1's `is_valid_two_d_list_format` for the property test.
_THEIR_GLUE = r"^\[(\(\d+(\.\d+)?,\s*\d+(\.\d+)?\)(,\s*\(\d+(\.\d+)?,\s*\d+(\.\d+)?\))*(,)?|)\]$"


def their_glue_is_valid(body: str) -> bool:
    if not re.match(_THEIR_GLUE, body):
        return False
    try:
        pairs = ast.literal_eval(body)
    except Exception:  # the reference catches everything here
        return False
    return isinstance(pairs, list) and all(
        isinstance(p, tuple) and len(p) == 2 and p[0] <= p[1] for p in pairs
    )


glue_pieces = st.sampled_from(
    ["[", "]", "(", ")", ",", ", ", ",\n", ",\t", ",\r\n", ",\u00a0", ",\x0b", " ", "\n",
     "0", "1", "5", "05", "00", "20", "2.5", "1.", ".5", "1e3", "-1", "\u0663", "9" * 30, "9" * 400]
)  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(parts=st.lists(glue_pieces, max_size=14))
def test_videochat_glue_grammar_equals_theirs(parts: list[str]) -> None:
    body = "".join(parts)
    assert (parse_videochat_glue(body) is not None) == their_glue_is_valid(body)


@settings(max_examples=300, deadline=None)
@given(a=st.integers(0, 40), b=st.integers(0, 40), c=st.integers(0, 40), d=st.integers(0, 40))
def test_valid_glue_is_built_from_pairs(a: int, b: int, c: int, d: int) -> None:
    body = f"[({a}, {b}), ({c}.5,{d})]"
    expected = None if a > b or c + 0.5 > d else [(float(a), float(b)), (c + 0.5, float(d))]
    assert parse_videochat_glue(body) == expected


# --- totality of the switches (the preset-level property is tests/test_rewards_properties.py)
texts = st.lists(
    st.sampled_from(
        ["<think>", "</think>", "<answer>", "</answer>", "<glue>", "</glue>", "{", "}",
         '"start_time": ', '"end_time": ', ", ", '"1e3"', '"nan"', "true", "1" * 400, " to ",
         "[(1, 2)]", "[(2, 1)]", "[]", "B", "A or B", "\n", " ", f"[({'9' * 400}, {'9' * 400})]"]
    ),
    max_size=20,
).map("".join)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(response=texts)
def test_switches_stay_total(response: str) -> None:
    for block in ("first", "last", "last_found"):
        for style in ("to", "json", "any"):
            for numbers in ("decimal", "float"):
                kwargs = {"style": style, "numbers": numbers, "block": block}
                value = builtin.tvg_iou(response, TVG, normalize=True, **kwargs)
                assert value is not None and 0.0 <= value <= 1.0 and not math.isnan(value)
        assert builtin.mcq_accuracy(response, MCQ, block=block) in (0.0, 1.0)
        assert builtin.gqa_accuracy(response, GQA, block=block) in (0.0, 1.0)
    for glue in ("vidrl", "videochat_r1"):
        value = builtin.gqa_iou(response, GQA, glue=glue)
        assert value is not None and 0.0 <= value <= 1.0
    for grammar in ("tags+glue", "answer_only+glue"):
        assert builtin.format_reward(response, GQA, grammar=grammar) in (0.0, 1.0)
