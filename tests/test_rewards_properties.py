"""Every builtin reward and every preset is total: any string gives a number in range.

Hypothesis pushes 10,000 strings (1,000 examples of 10) through every builtin, with every
grammar and interval style, on every task; and 10,000 through every preset. The strings
mix free text, soups of tag / JSON / number fragments (nan, inf, huge, negative, reversed,
"A or B", unicode) and near-valid responses built from them.
"""

from __future__ import annotations

import time
import typing

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vidrl.data.sample import Sample
from vidrl.rewards import builtin
from vidrl.rewards.config import RewardsConfig, build_reward
from vidrl.rewards.presets import PresetName
from vidrl.rewards.types import RewardInput

SAMPLES = (  # the first, with no usable duration, is only given to the builtins
    Sample(id="z", task="tvg", video="v", question="q", duration=0.0, timestamps=((1.0, 2.0),)),
    Sample(id="t", task="tvg", video="v", question="q", duration=30.0, timestamps=((10.0, 20.0),)),
    Sample("m", "mcq", "v", "q", duration=9.0, options=("a", "b"), answer="B"),
    Sample(
        id="g",
        task="gqa",
        video="v",
        question="q",
        duration=30.0,
        answer="A",
        timestamps=((0.0, 10.0), (5.0, 15.0)),
    ),
    Sample(
        id="k",
        task="track",
        video="v",
        question="q",
        duration=30.0,
        boxes=((0.0, 0.0, 0.5, 0.5), (0.25, 0.25, 1.0, 1.0)),
    ),
)

FRAGMENTS = [
    "<think>", "</think>", "<answer>", "</answer>", "<glue>", "</glue>", "<answer><answer>",
    "</answer></answer>", "<think><answer>", "{", "}", '"start_time"', '"end_time"', ": ", ", ",
    '"', '{"start_time": "', '", "end_time": "', '"}', " to ", " and ", " TO ", " - ", "\u2013",
    "(", ")", "[", "]", "[(", "), (", ")]", "[[", "], [", "]]", "A or B", "A, B", "(A)", "A", "B",
    "B.", "The answer is ", "Answer: ", "nan", "NaN", "inf", "-inf", "Infinity", "1e308",
    "1e999", "-3", "-0", "0", "0.5", "12.", ".5", "99999999999999999999", "1" * 400, "20 to 10",
    "5 - 3", "\n", " ", "\t", "\x00", "\u200b", "\uff21", "\u00e9", "\U0001f3ac", "\\", "'",
    "true", "null",
]  # fmt: skip
SKELETON = [
    "<think>", "why", "</think>", "\n", "<answer>", "12.5 to 20", "</answer>", "<glue>",
    "[(1, 2)]", "</glue>",
]  # fmt: skip


def soup(data: bytes) -> str:
    """Fragments picked by the bytes: tag / JSON / number soup."""
    return "".join(FRAGMENTS[b % len(FRAGMENTS)] for b in data)


def near_valid(data: bytes) -> str:
    """The full skeleton, each slot kept (byte < 128), dropped, or swapped for a fragment."""
    slots = []
    for slot, b in zip(SKELETON, data.ljust(len(SKELETON), b"\x00"), strict=False):
        slots.append(slot if b < 128 else "" if b < 160 else FRAGMENTS[b % len(FRAGMENTS)])
    return "".join(slots) + soup(data[len(SKELETON) :])


def expand(data: bytes, text: str) -> list[str]:
    """Ten strings from one draw: a draw of bytes and text is far cheaper in Hypothesis than
    ten structured draws, and still shrinks (to fewer, smaller bytes)."""
    chunks = [data[i::4] for i in range(4)]
    thirds = [text[i::3] for i in range(3)]
    return [
        *(soup(chunk) for chunk in chunks[:2]),
        *(near_valid(chunk) for chunk in chunks[2:]),
        f"<think>{thirds[0]}</think><answer>{soup(chunks[0][:6])}{thirds[1]}</answer>",
        near_valid(data[:12]) + text,
        *thirds,
        text,
    ]


batches = st.builds(expand, st.binary(max_size=400), st.text(max_size=120))

GRAMMARS = typing.get_args(builtin.FormatGrammar)
STYLES = ("json", "to", "any")
TASK_OF = {  # the content rewards besides tvg_iou, which has its own loop over styles
    builtin.mcq_accuracy: "mcq",
    builtin.gqa_accuracy: "gqa",
    builtin.gqa_iou: "gqa",
    builtin.track_iou: "track",
}
PRESETS: tuple[PresetName, ...] = typing.get_args(PresetName)
# think=False only swaps grammars, which the builtin property covers, so presets run with
# thinking here to keep the file fast.
COMPOSED = {preset: build_reward(RewardsConfig(preset=preset)) for preset in PRESETS}
MAX_TOTAL = {"temporal_r1": 1.0, "videochat_r1": 3.0, "vidrl": 2.5}  # sum of weights per task
SETTINGS = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def in_unit_range(value: float | None) -> bool:
    return value is not None and 0.0 <= value <= 1.0


@SETTINGS
@given(batch=batches)
def test_every_builtin_is_total(batch: list[str]) -> None:
    for response in batch:
        for sample in SAMPLES:
            for grammar in GRAMMARS:
                value = builtin.format_reward(response, sample, grammar=grammar)
                json_only = grammar.endswith("json_tvg") and sample.task != "tvg"
                assert value is None if json_only else value in (0.0, 1.0)
            for style in STYLES:
                value = builtin.tvg_iou(response, sample, style=style, normalize=style == "json")
                assert value is None if sample.task != "tvg" else in_unit_range(value)
            for fn, task in TASK_OF.items():
                value = fn(response, sample)
                assert value is None if sample.task != task else in_unit_range(value)


@SETTINGS
@given(batch=batches)
def test_every_preset_is_total(batch: list[str]) -> None:
    inputs = [RewardInput(sample, response) for response in batch for sample in SAMPLES[1:]]
    for preset, reward in COMPOSED.items():
        result = reward.score(inputs)
        assert result.failures == []
        for item, score in zip(inputs, result.scores, strict=True):
            if preset == "temporal_r1" and item.sample.task in ("gqa", "track"):
                assert score is None  # Temporal-R1 has no reward for these tasks
                continue
            assert score is not None
            assert 0.0 <= score.total <= MAX_TOTAL[preset]
            assert all(in_unit_range(v) for v in score.components.values())


def test_huge_adversarial_responses_are_scored_quickly() -> None:
    # Tag soups like the first two make backtracking grammars quadratic (minutes to hours at
    # this size); long digit runs do the same to naive number patterns.
    huge = [
        "<think></think><answer></answer>x" * 30_000,
        "<think>" + "</think> " * 100_000 + "<answer>" * 100_000,
        "<answer>" + "9" * 300_000 + " to " + "1" * 300_000 + "</answer>",
        "<think>a</think><answer>B</answer><glue>" + "[(1, 2), " * 20_000 + "</glue>",
        "<answer>" + "[0.1, 0.2, 0.3, 0.4], " * 10_000 + "</answer>",
        "\U0001f3ac" * 500_000,
    ]
    inputs = [RewardInput(sample, response) for response in huge for sample in SAMPLES]
    began = time.perf_counter()
    for preset, reward in COMPOSED.items():
        for score in reward(inputs):
            assert score is None or 0.0 <= score.total <= MAX_TOTAL[preset]
    assert time.perf_counter() - began < 10.0  # linear: well under a second here
