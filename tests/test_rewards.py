"""Builtin rewards on hand-worked numbers, the composition, and the registry."""

from __future__ import annotations

import logging
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vidrl.data.sample import Sample
from vidrl.rewards import registry
from vidrl.rewards.builtin import (
    format_reward,
    gqa_accuracy,
    gqa_iou,
    mcq_accuracy,
    track_iou,
    tvg_iou,
)
from vidrl.rewards.compose import ComposedReward, RewardComponent, per_sample
from vidrl.rewards.registry import RewardSpecError, register_reward, resolve_reward
from vidrl.rewards.types import RewardInput, RewardScore

TVG = Sample(id="t", task="tvg", video="v", question="q", duration=30.0, timestamps=((10.0, 20.0),))
MCQ = Sample("m", "mcq", "v", "q", duration=30.0, options=("x", "y", "z"), answer="B")
GQA = Sample(
    id="g",
    task="gqa",
    video="v",
    question="q",
    duration=30.0,
    options=("x", "y"),
    answer="(B)",
    timestamps=((0.0, 10.0), (5.0, 15.0)),
)
TRACK = Sample(
    id="k",
    task="track",
    video="v",
    question="q",
    duration=30.0,
    boxes=((0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)),
)


def answer(body: str) -> str:
    return f"<think>why</think><answer>{body}</answer>"


@pytest.mark.parametrize(
    ("response", "sample", "grammar", "expected"),
    [
        ("<think>a</think>\n<answer>B</answer>", MCQ, "tags", 1.0),
        ("  <think>a</think><answer>B</answer>\n", MCQ, "tags", 1.0),  # stripped first
        ("<answer>B</answer>", MCQ, "tags", 0.0),
        ("<think>a</think><answer>B</answer> more", MCQ, "tags", 0.0),
        ("<think>a</think>x<answer>B</answer>", MCQ, "tags", 0.0),  # only whitespace between
        (" <answer>B</answer> ", MCQ, "answer_only", 1.0),
        ("<think>a</think><answer>B</answer>", MCQ, "answer_only", 0.0),
        ("<think>a</think><answer>B</answer>", GQA, "tags", 0.0),  # gqa needs its glue block
        ("<think>a</think><answer>B</answer> <glue>[(1, 2)]</glue>", GQA, "tags", 1.0),
        ("<think>a</think><answer>B</answer><glue>nope</glue>", GQA, "tags", 1.0),
        ("<think>a</think><answer>B</answer><glue>nope</glue>", GQA, "tags+task", 0.0),
        ("<think>a</think><answer>B</answer><glue>[(2, 1)]</glue>", GQA, "tags+task", 0.0),
        ("<think>a</think><answer>B</answer><glue>[(1, 2)]</glue>", GQA, "tags+task", 1.0),
        (answer("A or B"), MCQ, "tags+task", 0.0),
        (answer("D"), MCQ, "tags+task", 0.0),  # 3 options: A..C
        (answer("C"), MCQ, "tags+task", 1.0),
        (answer("20 to 10"), TVG, "tags+task", 0.0),  # reversed is not well formed
        (answer("10 to 20"), TVG, "tags+task", 1.0),
        (answer("[[0, 0, 1, 1]]"), TRACK, "tags+task", 0.0),  # 1 box for 2 frames
        (answer("[[0, 0, 1, 1], [0, 0, 1, 1]]"), TRACK, "tags+task", 1.0),
        (answer('{"start_time": "1.5", "end_time": "3"}'), TVG, "tags_json_tvg", 1.0),
        (answer('{"start_time": 1.5, "end_time": 3}'), TVG, "tags_json_tvg", 0.0),  # unquoted
        (answer('{"start_time":"1.5","end_time":"3"}') + "\n", TVG, "tags_json_tvg", 1.0),
        ('<answer>{"start_time": "1", "end_time": "3"}</answer>', TVG, "answer_json_tvg", 1.0),
        (answer('{"start_time": "1", "end_time": "3"}'), MCQ, "tags_json_tvg", None),
    ],
)
def test_format_reward(response: str, sample: Sample, grammar: str, expected: float | None) -> None:
    assert format_reward(response, sample, grammar=grammar) == expected  # type: ignore[arg-type]


def test_format_reward_strip_off_is_exact() -> None:
    # Temporal-R1 matches the raw response: a trailing newline breaks the format.
    response = answer('{"start_time": "1", "end_time": "3"}') + "\n"
    assert format_reward(response, TVG, grammar="tags_json_tvg", strip=False) == 0.0
    assert format_reward(response[:-1], TVG, grammar="tags_json_tvg", strip=False) == 1.0


TAG_PIECES = [
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "<glue>",
    "</glue>",
    " ",
    " \n\t",
    "x",
]
SKELETON = [
    "<think>",
    "",
    "</think>",
    " \n ",
    "<answer>",
    "",
    "</answer>",
    "\t ",
    "<glue>",
    "",
    "</glue>",
]
soup = st.lists(st.sampled_from(TAG_PIECES), max_size=12).map("".join)
# Near-valid responses: each slot of the full skeleton kept, dropped, or swapped for a piece.
near_valid = st.tuples(
    *(st.sampled_from([slot, "", *TAG_PIECES]) for slot in SKELETON),
    st.sampled_from(["", " "]),
).map("".join)


@settings(max_examples=600, deadline=None)
@given(text=st.one_of(soup, near_valid))
def test_tag_grammar_equals_the_reference_regexes(text: str) -> None:
    # Our linear scan must agree with the references' regexes on tag soup.
    think = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
    glue = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>\s*<glue>.*?</glue>", re.DOTALL)
    bare = re.compile(r"\s*<answer>.*?</answer>\s*", re.DOTALL)
    raw = {"strip": False}
    assert format_reward(text, MCQ, "tags", **raw) == float(bool(think.fullmatch(text)))
    assert format_reward(text, GQA, "tags", **raw) == float(bool(glue.fullmatch(text)))
    assert format_reward(text, MCQ, "answer_only", **raw) == float(bool(bare.fullmatch(text)))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("12 to 22", 8 / 12),  # inter = 20 - 12 = 8, hull = 22 - 10 = 12
        ("10 to 20", 1.0),
        ("25 to 40", 0.0),  # clamped to (25, 30): no overlap with (10, 20)
        ("-5 - 15", 0.0),  # a signed start is not read as (5, 15): no interval
        ("20 to 10", 0.0),  # reversed
        ("35 to 40", 0.0),  # clamped to (30, 30): empty
        ("0 to 1000", 10 / 30),  # clamped to (0, 30): inter 10, hull 30
        ("no interval", 0.0),
    ],
)
def test_tvg_iou(body: str, expected: float) -> None:
    assert tvg_iou(answer(body), TVG) == pytest.approx(expected, abs=1e-12)


def test_tvg_iou_clamps_negative_starts_and_normalizes() -> None:
    negative = answer('{"start_time": -5, "end_time": 15}')
    # clamped to (0, 15) vs (10, 20): inter = 15 - 10 = 5, hull = 20 - 0 = 20
    assert tvg_iou(negative, TVG, style="json") == 0.25
    assert tvg_iou(answer("12 to 22"), TVG, normalize=True) == pytest.approx(8 / 12, abs=1e-12)
    assert tvg_iou("<answer>12 to 22", TVG) == 0.0  # no complete answer block
    assert tvg_iou(answer("12 to 22"), MCQ) is None


def test_option_accuracy() -> None:
    assert mcq_accuracy(answer("The answer is (B)."), MCQ) == 1.0
    assert mcq_accuracy(answer("C"), MCQ) == 0.0
    assert mcq_accuracy(answer("A or B"), MCQ) == 0.0  # the known hack scores nothing
    assert mcq_accuracy(answer(""), MCQ) == 0.0
    assert mcq_accuracy(answer("B"), GQA) is None
    unanswerable = Sample(id="u", task="mcq", video="v", question="q", duration=1.0)
    assert mcq_accuracy(answer("B"), unanswerable) is None  # no ground-truth letter
    assert gqa_accuracy(answer("B"), GQA) == 1.0  # ground truth "(B)" normalises to B
    assert gqa_accuracy(answer("C"), GQA) == 0.0  # only 2 options
    assert gqa_accuracy(answer("B"), MCQ) is None


@pytest.mark.parametrize(
    ("glue", "expected"),
    [
        # ground truth (0, 10) + (5, 15) merges to (0, 15), length 15.
        ("[(5, 20)]", 10 / 20),  # inter 10, union 15 + 15 - 10 = 20
        ("[(0, 4), (3, 6), (20, 25)]", 6 / 20),  # pred (0, 6) + (20, 25): inter 6, union 11+15-6
        ("[(20, 5)]", 0.0),  # reversed: dropped
        ("[(10, 100)]", 5 / 30),  # clamped to (10, 30): inter 5, union 20 + 15 - 5 = 30
        ("[(0, 15)]", 1.0),
        ("[]", 0.0),
    ],
)
def test_gqa_iou(glue: str, expected: float) -> None:
    response = f"<think>a</think><answer>B</answer><glue>{glue}</glue>"
    assert gqa_iou(response, GQA) == pytest.approx(expected, abs=1e-12)


def test_gqa_iou_not_applicable() -> None:
    assert gqa_iou("<glue>[(1, 2)]</glue>", TVG) is None


@pytest.mark.parametrize(
    ("boxes", "expected"),
    [
        ("[[0, 0, 0.5, 0.5], [0.5, 0.5, 1.5, 1.5]]", 1.0),  # second box clamped to the frame
        # frame 1: inter 0.25 * 0.5 = 0.125, union 0.25 + 0.125 - 0.125 = 0.25 -> 0.5;
        # frame 2: degenerate (x1 == x0) -> 0; mean (0.5 + 0) / 2 = 0.25
        ("[[0, 0, 0.25, 0.5], [0.6, 0.6, 0.6, 0.9]]", 0.25),
        ("[[0, 0, 0.5, 0.5]]", 0.0),  # one box for two frames
        ("[[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]]", 0.0),
    ],
)
def test_track_iou(boxes: str, expected: float) -> None:
    assert track_iou(answer(boxes), TRACK) == pytest.approx(expected, abs=1e-12)
    assert track_iou(answer(boxes), TVG) is None


# --- composition -------------------------------------------------------------------------


def test_composed_total_is_the_weighted_sum_of_applicable_components() -> None:
    reward = ComposedReward(
        [
            RewardComponent("format", per_sample(format_reward), weight=0.5),
            RewardComponent("iou", per_sample(tvg_iou), weight=2.0, tasks=frozenset({"tvg"})),
            RewardComponent("acc", per_sample(mcq_accuracy), weight=1.0),
        ]
    )
    tvg, mcq = reward([RewardInput(TVG, answer("12 to 22")), RewardInput(MCQ, answer("B"))])
    # tvg: 0.5 * 1 + 2 * (8 / 12); mcq_accuracy answers None for tvg: left out.
    assert tvg == RewardScore(total=0.5 + 2 * (8 / 12), components={"format": 1.0, "iou": 8 / 12})
    # mcq: "iou" is not called (tvg only); 0.5 * 1 + 1 * 1
    assert mcq == RewardScore(total=1.5, components={"format": 1.0, "acc": 1.0})


def test_sample_with_no_applicable_component_gets_none() -> None:
    reward = ComposedReward([RewardComponent("iou", per_sample(tvg_iou))])
    assert reward([RewardInput(MCQ, answer("B"))]) == [None]


def test_failing_component_fails_only_its_sample(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def fragile(batch: list[RewardInput]) -> list[RewardScore | None]:
        calls.append(len(batch))
        if any(item.response == "boom" for item in batch):
            raise RuntimeError("bad input")
        return [RewardScore(total=1.0) for _ in batch]

    reward = ComposedReward([RewardComponent("fragile", fragile)])
    batch = [RewardInput(TVG, "ok"), RewardInput(MCQ, "boom"), RewardInput(GQA, "ok")]
    with caplog.at_level(logging.WARNING):
        result = reward.score(batch)
    assert calls == [3, 1, 1, 1]  # the batch, then one sample at a time
    assert result.scores[0] == RewardScore(total=1.0, components={"fragile": 1.0})
    assert result.scores[1] is None and result.scores[2] is not None
    assert [(f.sample_id, f.component) for f in result.failures] == [("m", "fragile")]
    assert "RuntimeError: bad input" in result.failures[0].error
    assert "'fragile' failed on sample 'm'" in caplog.text


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ([RewardScore(total=float("nan"))], "non-finite"),
        (["0.5"], "expected RewardScore"),
        ([], "returned 0 scores for a batch of 1"),
    ],
)
def test_unusable_component_output_is_a_failure(returned: list[object], message: str) -> None:
    reward = ComposedReward([RewardComponent("bad", lambda batch: returned)])  # type: ignore[arg-type, return-value]
    result = reward.score([RewardInput(TVG, "x")])
    assert result.scores == [None]
    assert message in result.failures[0].error


def test_plain_numbers_are_accepted_as_scores() -> None:
    reward = ComposedReward([RewardComponent("n", lambda batch: [2] * len(batch), weight=0.5)])  # type: ignore[arg-type, return-value]
    assert reward([RewardInput(TVG, "x")]) == [RewardScore(total=1.0, components={"n": 2.0})]


def test_duplicate_names_on_a_task_are_rejected() -> None:
    fmt = per_sample(format_reward)
    ComposedReward(  # same name, disjoint tasks: fine
        [
            RewardComponent("format", fmt, tasks=frozenset({"tvg"})),
            RewardComponent("format", fmt, tasks=frozenset({"mcq"})),
        ]
    )
    with pytest.raises(ValueError, match=r"\['format'\] are named twice for task 'tvg'"):
        ComposedReward([RewardComponent("format", fmt), RewardComponent("format", fmt)])


# --- registry ----------------------------------------------------------------------------


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = dict(registry.REWARDS)
    yield
    registry.REWARDS.clear()
    registry.REWARDS.update(saved)


def test_builtin_spec_binds_kwargs() -> None:
    fn = resolve_reward("format_reward", {"grammar": "answer_only"})
    assert fn([RewardInput(MCQ, "<answer>B</answer>")]) == [RewardScore(total=1.0)]


def test_register_reward_per_sample_and_batch(clean_registry: None) -> None:
    def length(response: str, sample: Sample, scale: float = 1.0) -> float:
        return scale * len(response)

    register_reward("length", length, per_sample=True)
    register_reward("ones", lambda batch: [RewardScore(total=1.0)] * len(batch))
    assert resolve_reward("length", {"scale": 0.5})([RewardInput(TVG, "abcd")]) == [
        RewardScore(total=2.0)  # 0.5 * 4 characters
    ]
    assert resolve_reward("ones")([RewardInput(TVG, "x")]) == [RewardScore(total=1.0)]
    with pytest.raises(ValueError, match="already registered"):
        register_reward("ones", lambda batch: [])
    register_reward("ones", lambda batch: [], replace=True)
    with pytest.raises(ValueError, match="is a builtin"):
        register_reward("tvg_iou", lambda batch: [], replace=True)  # builtins stay builtins


def test_module_spec() -> None:
    fn = resolve_reward("vidrl.rewards.builtin:tvg_iou", {"style": "to"}, per_sample=True)
    assert fn([RewardInput(TVG, answer("10 to 20"))]) == [RewardScore(total=1.0)]


def test_file_spec(tmp_path: Path) -> None:
    path = tmp_path / "my_rewards.py"
    path.write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass
            from vidrl.rewards.types import RewardScore

            @dataclass
            class Scale:  # dataclasses need the module in sys.modules
                factor: float

            def shouting(batch, factor=2.0):
                scale = Scale(factor).factor
                return [RewardScore(total=scale * r.response.isupper()) for r in batch]
            """
        )
    )
    fn = resolve_reward(f"{path}:shouting", {"factor": 3.0})
    assert fn([RewardInput(TVG, "HEY"), RewardInput(TVG, "hey")]) == [
        RewardScore(total=3.0),
        RewardScore(total=0.0),
    ]


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        ("tvg_iuo", {}, "unknown reward 'tvg_iuo'; allowed: a registered name"),
        ("no/such/file.py:fn", {}, "does not exist"),
        ("vidrl.no_such_module:fn", {}, "cannot import 'vidrl.no_such_module'"),
        ("vidrl.rewards.builtin:no_such_fn", {}, "has no attribute 'no_such_fn'"),
        ("vidrl.rewards.builtin:math.pi", {}, "'math.pi' is not callable"),
        (":fn", {}, "expected 'module:function'"),
        ("format_reward", {"grammer": "tags"}, "bad kwargs"),
        ("format_reward", {"grammar": "tagz"}, "kwargs['grammar'] = 'tagz' is not one of"),
    ],
)
def test_bad_specs_name_the_spec(spec: str, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(RewardSpecError, match=re.escape(message)) as error:
        resolve_reward(spec, kwargs)
    assert repr(spec) in str(error.value)


def test_file_spec_import_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("raise RuntimeError('nope')\n")
    with pytest.raises(RewardSpecError, match=r"importing .*broken\.py.* failed: nope"):
        resolve_reward(f"{path}:fn")
