"""The reward presets: each is a plain list of components you could have written in YAML.

temporal_r1 (Temporal-R1, arXiv 2506.01908; `verl/utils/reward_score/tvg.py` of their repo):
    tvg: 0.5 * IoU + 0.5 * format, as `tvg_compute_score`.
         format: their strict JSON grammar, fullmatched on the raw response (not stripped):
         `<think>.*?</think>\\s*<answer>\\s*{"start_time": "S", "end_time": "E"}\\s*</answer>`,
         S and E made of digits and dots only (DOTALL).
         IoU: the FIRST `<answer>` block, stripped, `json.loads`, then Python's `float` of
         start_time and end_time (so "5.000e-01", " 2 ", "1_0", 3 and true count, while the
         format fails on all but the quoted decimals), divided by the video length; any
         failure scores 0. A response with two answer blocks is scored on the first.
    mcq: 0.5 * format (`<think>.*?</think>\\s*<answer>.*?</answer>`, raw) + 0.5 * accuracy of
         the first answer block. Their released code has no video mcq reward (the r1v reward
         it ships grades image answers with mathruler); these terms follow the paper.
    gqa, track: no reward in their code, so no component applies (score None).
    Departures, each where their code is wrong by its own intent:
    - times outside the video are clamped to [0, duration] before the IoU (theirs scores
      (-5, 15) against (10, 20) in a 30 s video as 0.2, ours as (0, 15): 0.25; (0, 1000)
      there 0.01, here 1/3);
    - reversed intervals, points, NaN and inf score IoU 0; theirs does too (by its min/max
      order, or by raising), so this is no difference in score;
    - the ground truth is divided by the duration when scoring, where their data files
      store it already divided (the same number up to the last bit);
    - an mcq answer must name exactly one option letter (`parse_letter`, which also reads
      "[B]" and "B - text").
    Some revisions of their code weight 0.9 * IoU + 0.1 * format; we follow the paper's 0.5/0.5.

videochat_r1 (VideoChat-R1, `src/open_r1/grpo_tg.py`, `grpo_qa.py`, `grpo_gqa.py`,
`grpo_tasks.py`; rewards summed unweighted):
    tvg: format + IoU (seconds) of the last `S to E` / `S and E` (exactly one space each
         side, case-insensitive, unsigned decimals) in the last block that a left-to-right
         scan for `<answer>...</answer>` finds (their `re.findall(...)[-1]`); a reversed
         pair scores 0, as their `start_time > end_time` check does.
    mcq: format + accuracy of the FIRST answer block (their `re.search`).
    gqa: format (the tag chain with `<glue>`, then the first glue block valid in their
         strict grammar, `parse_videochat_glue`; `[]` is valid, the answer is not checked)
         + accuracy of the first answer block + IoU of the merged intervals of the first
         glue block (0 when that block is invalid).
    track: format (with a box list of the right length) + mean box IoU.
    format: `<think>.*?</think>\\s*<answer>.*?</answer>` fullmatched on the stripped response.
    Departures, each where their code is wrong by its own intent:
    - times outside the video are clamped to [0, duration] (theirs scores "0 to 1000"
      against (10, 20) as 0.01, ours as 1/3), in tvg and in the glue;
    - an empty union (a point answer on a point ground truth, or no glue against an empty
      ground truth) scores 0, where theirs scores 1.0;
    - an option letter is read by `parse_letter`: exactly one letter, as the answer ("B",
      "(B)", "B.", "[B]", "B - text", "The answer is B"); theirs takes the first capital A-G
      anywhere after deleting a few prefixes, so "A or B" reads as A, "Answer: B" as A (the
      A of Answer), "Best option: C" as B (their prefix list joins "Best answer:" "Best
      option:" into one string, so neither is removed) and "I think C" as C; ours reads
      "A or B", "[A] or [B]", "A - B" and "I think C" as no answer, "Answer: B" as B and
      "Best option: C" as C (both read "[B]" and "B - text" as B);
    - tracking is not brought to their code: it needs len(sample.boxes) boxes where theirs
      needs exactly 8, reads the last answer block with `parse_boxes` (theirs: the first,
      with `ast.literal_eval`, newlines deleted), clamps boxes to the frame and scores a
      degenerate box 0 on its frame.
    The sum is taken in float64; their trainer adds the rewards as float32 tensors.

vidrl (default): format is a shaping term at half the weight of the content reward on
every task: 0.5 * format ("tags+task": the tags, and an answer that parses as the task's
answer) + 1.0 * (tvg_iou with any interval style | mcq_accuracy | gqa_accuracy + gqa_iou |
track_iou). The format term asks for the task's answer because with the tags alone a policy
trained on grounding and multiple choice together found a cheaper reward: a letter to every
question (seen on the synthetic task: grounding IoU fell to 0 for good and the
responses shrank to 8 tokens, at 0.5 a response for the format, from the 4th of 40 steps at
learning rate 1e-3).

`think=False` swaps each thinking grammar for its no-thinking twin ("tags" ->
"answer_only", "tags+task" -> "answer_only+task", "tags+glue" -> "answer_only+glue",
"tags_json_tvg" -> "answer_json_tvg").
"""

from __future__ import annotations

from typing import Any, Literal

PresetName = Literal["temporal_r1", "videochat_r1", "vidrl"]
Component = dict[str, Any]
"""One component config as plain data (the fields of `RewardComponentConfig`)."""
Tasks = list[str] | None

_NO_THINK_GRAMMAR = {
    "tags": "answer_only",
    "tags+task": "answer_only+task",
    "tags+glue": "answer_only+glue",
    "tags_json_tvg": "answer_json_tvg",
}


def preset_components(name: PresetName, think: bool = True) -> list[Component]:
    """The component configs (as plain dicts) of a preset."""
    builders = {"temporal_r1": _temporal_r1, "videochat_r1": _videochat_r1, "vidrl": _vidrl}
    if name not in builders:
        raise ValueError(f"unknown reward preset {name!r}; allowed: {sorted(builders)}")
    components = builders[name]()
    if not think:
        for component in components:
            grammar = component.get("kwargs", {}).get("grammar")
            if grammar in _NO_THINK_GRAMMAR:
                component["kwargs"]["grammar"] = _NO_THINK_GRAMMAR[grammar]
    return components


def _temporal_r1() -> list[Component]:
    return [
        _format(["tvg"], "tags_json_tvg", weight=0.5, strip=False),
        _part("tvg_iou", ["tvg"], 0.5, style="json", numbers="float", normalize=True, block="first"),
        _format(["mcq"], "tags", weight=0.5, strip=False),
        _part("mcq_accuracy", ["mcq"], weight=0.5, block="first"),
    ]


def _videochat_r1() -> list[Component]:
    return [
        _format(["tvg", "mcq"], "tags"),
        _format(["gqa"], "tags+glue"),
        _format(["track"], "tags+task"),
        _part("tvg_iou", ["tvg"], style="to", block="last_found"),
        _part("mcq_accuracy", ["mcq"], block="first"),
        _part("gqa_accuracy", ["gqa"], block="first"),
        _part("gqa_iou", ["gqa"], glue="videochat_r1"),
        _part("track_iou", ["track"]),
    ]


def _vidrl() -> list[Component]:
    return [
        _format(None, "tags+task", weight=0.5),
        _part("tvg_iou", ["tvg"], style="any"),
        _part("mcq_accuracy", ["mcq"]),
        _part("gqa_accuracy", ["gqa"]),
        _part("gqa_iou", ["gqa"]),
        _part("track_iou", ["track"]),
    ]


def _format(tasks: Tasks, grammar: str, weight: float = 1.0, **kwargs: Any) -> Component:
    return _part("format_reward", tasks, weight, name="format", grammar=grammar, **kwargs)


def _part(fn: str, tasks: Tasks, weight: float = 1.0, name: str = "", **kwargs: Any) -> Component:
    """One component; it is reported under the builtin's name unless `name` is given."""
    return {"name": name or fn, "fn": fn, "weight": weight, "tasks": tasks, "kwargs": kwargs}
