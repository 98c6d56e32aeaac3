"""Presets on hand-worked examples, against the references' formulas, and their config."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from reward_samples import GQA, MCQ, TVG

from vidrl.data.sample import Sample
from vidrl.rewards.compose import ComposedReward
from vidrl.rewards.config import RewardsConfig, build_reward
from vidrl.rewards.presets import preset_components
from vidrl.rewards.types import RewardInput

TRACK = Sample(
    id="k",
    task="track",
    video="v",
    question="q",
    duration=30.0,
    boxes=((0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)),
)

JSON_12_22 = '<think>t</think><answer>{"start_time": "12", "end_time": "22"}</answer>'
# Against (10, 20): inter = 20 - 12 = 8, hull = 22 - 10 = 12, IoU = 2/3 (in seconds or
# divided by the 30 s duration alike, up to rounding).
IOU_12_22 = 2 / 3
GQA_RESPONSE = "<think>t</think><answer>B</answer><glue>[(5, 20)]</glue>"
# glue (5, 20) vs ground truth merged to (0, 15): inter 10, union 15 + 15 - 10 = 20 -> 0.5
TRACK_RESPONSE = "<think>t</think><answer>[[0, 0, 0.25, 0.5], [0.5, 0.5, 1, 1]]</answer>"
# frame 1: inter 0.125, union 0.25 + 0.125 - 0.125 -> 0.5; frame 2: 1.0; mean 0.75


@functools.cache
def preset_reward(preset: str, think: bool = True) -> ComposedReward:
    return build_reward(RewardsConfig(preset=preset, think=think))  # type: ignore[arg-type]


def total(preset: str, sample: Sample, response: str, think: bool = True) -> float | None:
    score = preset_reward(preset, think)([RewardInput(sample, response)])[0]
    return None if score is None else score.total


@pytest.mark.parametrize(
    ("sample", "response", "expected"),
    [
        (TVG, JSON_12_22, 0.5 * 1 + 0.5 * IOU_12_22),
        (TVG, JSON_12_22.replace('"12"', "12"), 0.5 * 0 + 0.5 * IOU_12_22),  # unquoted: no format
        (TVG, JSON_12_22 + "\n", 0.5 * 0 + 0.5 * IOU_12_22),  # their regex sees the raw text
        (TVG, "<think>t</think><answer>12 to 22</answer>", 0.0),  # not JSON: neither term
        (TVG, JSON_12_22.replace('"22"', '"5"'), 0.5 * 1 + 0.5 * 0),  # reversed (12, 5)
        (MCQ, "<think>t</think><answer>B</answer>", 0.5 * 1 + 0.5 * 1),
        (MCQ, "<think>t</think><answer>A or B</answer>", 0.5 * 1 + 0.5 * 0),
        (MCQ, "<think>t</think><answer>[B]</answer>", 0.5 * 1 + 0.5 * 1),
        (MCQ, "<think>t</think><answer>B - b</answer>", 0.5 * 1 + 0.5 * 1),  # B, then its text
        (MCQ, "<think>t</think><answer>[A] or [B]</answer>", 0.5 * 1 + 0.5 * 0),
        (GQA, GQA_RESPONSE, None),  # no Temporal-R1 reward for grounded QA
        (TRACK, TRACK_RESPONSE, None),
    ],
)
def test_temporal_r1(sample: Sample, response: str, expected: float | None) -> None:
    assert total("temporal_r1", sample, response) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("sample", "response", "expected"),
    [
        (TVG, "<think>t</think><answer>from 12 to 22</answer>", 1 + IOU_12_22),
        (TVG, " <think>t</think><answer>12 and 22</answer>\n", 1 + IOU_12_22),  # stripped
        (TVG, JSON_12_22, 1 + 0),  # no "S to E" in the answer
        (TVG, "<answer>12 to 22</answer>", 0 + IOU_12_22),
        (MCQ, "<think>t</think><answer>(B)</answer>", 1 + 1),
        (MCQ, "<think>t</think><answer>[B]</answer>", 1 + 1),
        (MCQ, "<think>t</think><answer>B - b</answer>", 1 + 1),
        (MCQ, "<think>t</think><answer>A - B</answer>", 1 + 0),  # two options named
        (GQA, GQA_RESPONSE, 1 + 1 + 0.5),
        (GQA, GQA_RESPONSE.replace(">B<", ">[B]<"), 1 + 1 + 0.5),
        (GQA, GQA_RESPONSE.replace("[(5, 20)]", "[(20, 5)]"), 0 + 1 + 0),  # invalid glue
        (TRACK, TRACK_RESPONSE, 1 + 0.75),
        (TRACK, "<think>t</think><answer>[[0, 0, 0.5, 0.5]]</answer>", 0 + 0),  # 1 box of 2
    ],
)
def test_videochat_r1(sample: Sample, response: str, expected: float) -> None:
    assert total("videochat_r1", sample, response) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("sample", "response", "expected"),
    [
        (TVG, JSON_12_22, 0.5 * 1 + IOU_12_22),
        (TVG, "<think>t</think><answer>12 to 22</answer>", 0.5 * 1 + IOU_12_22),
        (TVG, "<think>t</think><answer>12 - 22 s</answer>", 0.5 * 1 + IOU_12_22),
        (TVG, "<answer>12 to 22</answer>", 0.5 * 0 + IOU_12_22),
        (MCQ, "<think>t</think><answer>A or B</answer>", 0.5 * 0 + 0),  # not one option
        (TVG, "<think>t</think><answer>B</answer>", 0.5 * 0 + 0),  # a letter is no interval
        (TVG, "<think>t</think><answer>22 to 12</answer>", 0.5 * 0 + 0),  # reversed
        (MCQ, "<think>t</think><answer>The answer is B.</answer>", 0.5 * 1 + 1),
        (MCQ, "<think>t</think><answer>[B]</answer>", 0.5 * 1 + 1),
        (MCQ, "<think>t</think><answer>B - b</answer>", 0.5 * 1 + 1),
        (MCQ, "<think>t</think><answer>[C]</answer>", 0.5 * 1 + 0),  # well formed, wrong
        (MCQ, "<think>t</think><answer>[A] or [B]</answer>", 0.5 * 0 + 0),  # not one option
        (MCQ, "<think>t</think><answer>A - B</answer>", 0.5 * 0 + 0),
        (MCQ, "<think>t</think><answer>[D]</answer>", 0.5 * 0 + 0),  # only 3 options
        (GQA, GQA_RESPONSE, 0.5 * 1 + 1 + 0.5),
        (GQA, GQA_RESPONSE.replace(">B<", ">B - b<"), 0.5 * 1 + 1 + 0.5),
        (TRACK, TRACK_RESPONSE, 0.5 * 1 + 0.75),
    ],
)
def test_vidrl(sample: Sample, response: str, expected: float) -> None:
    assert total("vidrl", sample, response) == pytest.approx(expected, abs=1e-12)


def test_think_false_uses_the_answer_only_grammars() -> None:
    assert total("vidrl", MCQ, "<answer>B</answer>", think=False) == 0.5 * 1 + 1
    assert total("vidrl", MCQ, "<think>t</think><answer>B</answer>", think=False) == 0.5 * 0 + 1
    bare_json = '<answer>{"start_time": "12", "end_time": "22"}</answer>'
    assert total("temporal_r1", TVG, bare_json, think=False) == pytest.approx(
        0.5 * 1 + 0.5 * IOU_12_22, abs=1e-12
    )
    assert total("videochat_r1", GQA, "<answer>B</answer><glue>[(5, 20)]</glue>", think=False) == (
        1 + 1 + 0.5
    )


# --- the references' formulas, written down independently from the field notes -----------

TEMPORAL_R1_FORMAT = (
    r'<think>.*?</think>\s*<answer>\s*\{\s*"start_time"\s*:\s*"([\d.]+)"\s*,\s*'
    r'"end_time"\s*:\s*"([\d.]+)"\s*\}\s*</answer>'
)


def temporal_r1_reference(response: str, gt: tuple[float, float], duration: float) -> float:
    """0.5 * IoU + 0.5 * format; IoU of the first answer's JSON times / the video length."""
    fmt = 1.0 if re.fullmatch(TEMPORAL_R1_FORMAT, response, re.DOTALL) else 0.0
    try:
        data = json.loads(re.search(r"<answer>(.*?)</answer>", response, re.DOTALL)[1].strip())
        s, e = float(data["start_time"]) / duration, float(data["end_time"]) / duration
        gs, ge = gt[0] / duration, gt[1] / duration
        iou = max(min(e, ge) - max(s, gs), 0) / (max(e, ge) - min(s, gs))
    except Exception:  # the reference scores any parse error as IoU 0
        iou = 0.0
    return 0.5 * iou + 0.5 * fmt


def videochat_r1_reference(response: str, gt: tuple[float, float]) -> float:
    """format + IoU in seconds of the last "S to|and E" in the last answer."""
    tags = r"<think>.*?</think>\s*<answer>.*?</answer>"
    fmt = 1.0 if re.fullmatch(tags, response.strip(), re.DOTALL) else 0.0
    answers = re.findall(r"<answer>(.*?)</answer>", response, re.DOTALL)
    ranges = re.findall(r"(\d+\.?\d*) (to|and) (\d+\.?\d*)", answers[-1] if answers else "", re.I)
    iou = 0.0
    if ranges:
        s, e = float(ranges[-1][0]), float(ranges[-1][2])
        iou = max(0, min(e, gt[1]) - max(s, gt[0])) / (max(e, gt[1]) - min(s, gt[0]))
    return fmt + iou


@st.composite
def grounding_cases(draw: st.DrawFn) -> tuple[float, tuple[float, float], tuple[float, float]]:
    """A duration and two well-formed intervals in it (start < end), in centiseconds."""
    duration = draw(st.integers(100, 60_000))

    def interval() -> tuple[float, float]:
        start = draw(st.integers(0, duration - 1))
        return start / 100, draw(st.integers(start + 1, duration)) / 100

    return duration / 100, interval(), interval()


thoughts = st.text(st.characters(blacklist_characters="<>"), max_size=30)


@settings(max_examples=300, deadline=None)
@given(case=grounding_cases(), think=thoughts, variant=st.integers(0, 5))
def test_temporal_r1_equals_reference(case: tuple, think: str, variant: int) -> None:
    duration, gt, (s, e) = case
    body = [
        f'{{"start_time": "{s}", "end_time": "{e}"}}',
        f'\n{{"start_time":"{s}",\n "end_time": "{e}"}} ',
        f'{{"start_time": {s}, "end_time": {e}}}',  # unquoted: IoU only
        f'{{"start_time": "{s}", "end_time": "{e}"}}',
        f'{{"start_time": "{s:.3e}", "end_time": "{e:.3e}"}}',  # exponent form: IoU only
        f'{{"start_time": "{s}", "end_time": "{e}"}}</answer><answer>{{}}',  # two blocks
    ][variant]
    response = f"<answer>{body}</answer>"
    if variant != 3:
        response = f"<think>{think}</think>{response}"
    # The exponent form rounds to 4 digits: an end rounded past the video's end is clamped by
    # vidrl and not by the reference (a listed departure), so their IoUs need not agree there.
    assume(variant != 4 or float(f"{e:.3e}") <= duration)
    sample = Sample("r", "tvg", "v", "q", duration=duration, timestamps=(gt,))
    ours = preset_reward("temporal_r1")([RewardInput(sample, response)])[0]
    assert ours is not None and ours.total == temporal_r1_reference(response, gt, duration)


@settings(max_examples=300, deadline=None)
@given(case=grounding_cases(), think=thoughts, variant=st.integers(0, 3))
def test_videochat_r1_equals_reference(case: tuple, think: str, variant: int) -> None:
    duration, gt, (s, e) = case
    bodies = [f"{s} to {e}", f"The event happens from {s} to {e} seconds.", f"{s} and {e}"]
    response = f"<answer>{bodies[variant % 3]}</answer>"
    if variant != 3:
        response = f"<think>{think}</think>\n{response}"
    sample = Sample("r", "tvg", "v", "q", duration=duration, timestamps=(gt,))
    ours = preset_reward("videochat_r1")([RewardInput(sample, response)])[0]
    assert ours is not None and ours.total == videochat_r1_reference(response, gt)


# --- config ------------------------------------------------------------------------------


def test_components_extend_the_preset() -> None:
    cfg = RewardsConfig(
        components=[
            {
                "name": "strict_format",
                "fn": "format_reward",
                "weight": 0.25,
                "tasks": ["tvg"],
                "kwargs": {"grammar": "tags_json_tvg"},
            }
        ],
    )
    score = build_reward(cfg)([RewardInput(TVG, JSON_12_22)])[0]
    assert score is not None
    expected = {"format": 1.0, "tvg_iou": IOU_12_22, "strict_format": 1.0}
    assert score.components == pytest.approx(expected)
    assert score.total == pytest.approx(0.5 + IOU_12_22 + 0.25)  # vidrl's + 0.25 * 1


def test_preset_null_uses_only_the_components(tmp_path: Path) -> None:
    path = tmp_path / "length.py"
    path.write_text("def length(response, sample):\n    return len(response) / 100\n")
    cfg = RewardsConfig(
        preset=None,
        components=[{"name": "length", "fn": f"{path}:length", "per_sample": True, "weight": 2}],
    )
    score = build_reward(cfg)([RewardInput(MCQ, "x" * 10)])[0]
    assert score is not None and score.components == {"length": 0.1}
    assert score.total == pytest.approx(0.2)  # 2 * 10 / 100


@pytest.mark.parametrize(
    ("config", "fragments"),
    [
        (
            {"preset": "deepseek"},
            ["preset", "'temporal_r1', 'videochat_r1' or 'vidrl'", "deepseek"],
        ),
        ({"preset": None}, ["preset is null and components is empty"]),
        (
            {"components": [{"name": "x", "fn": "tvg_iuo"}]},
            ["components.0.fn", "tvg_iuo", "allowed: format_reward"],
        ),
        (
            {"components": [{"name": "x", "fn": "tvg_iou", "weight": -1}]},
            ["components.0.weight", "greater than or equal to 0", "-1"],
        ),
        (
            {"components": [{"name": "x", "fn": "tvg_iou", "tasks": ["video"]}]},
            ["components.0.tasks.0", "'tvg', 'mcq', 'gqa' or 'track'", "video"],
        ),
        (
            {"components": [{"name": "x", "fn": "tvg_iou", "kwargs": {"style": "xml"}}]},
            ["kwargs['style'] = 'xml' is not one of ['json', 'to', 'any']"],
        ),
        (
            {"components": [{"name": "x", "fn": "tvg_iou", "kwargs": {"stlye": "to"}}]},
            ["'x'", "bad kwargs", "stlye"],
        ),
        (
            {"components": [{"name": "format", "fn": "tvg_iou"}]},
            ["['format'] are named twice for task 'tvg'", "preset 'vidrl'"],
        ),
        (
            {"components": [{"name": "x", "fn": "tvg_iou", "wieght": 1}]},
            ["components.0.wieght", "Extra inputs are not permitted"],
        ),
    ],
)
def test_config_errors_name_key_value_and_allowed(config: dict, fragments: list[str]) -> None:
    with pytest.raises(ValidationError) as error:
        RewardsConfig.model_validate(config)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_preset_lists_are_plain_data() -> None:
    components = preset_components("videochat_r1", think=False)
    assert [c["name"] for c in components] == [
        "format",
        "format",
        "format",
        "tvg_iou",
        "mcq_accuracy",
        "gqa_accuracy",
        "gqa_iou",
        "track_iou",
    ]
    assert [c["kwargs"]["grammar"] for c in components[:3]] == [
        "answer_only",
        "answer_only+glue",
        "answer_only+task",
    ]
    assert preset_components("videochat_r1")[0]["kwargs"]["grammar"] == "tags"  # not mutated
