"""The reward presets: each is a plain list of components you could have written in YAML.

temporal_r1 (Temporal-R1, arXiv 2506.01908; their EasyR1 reward code):
    tvg: 0.5 * format + 0.5 * IoU, format = their strict JSON grammar on the raw response
         (`<think>.*?</think>\\s*<answer>\\s*{"start_time": "S", "end_time": "E"}\\s*</answer>`),
         IoU on times divided by the video length (`normalize`).
    mcq: 0.5 * format (`<think>.*?</think>\\s*<answer>.*?</answer>`) + 0.5 * accuracy.
    gqa, track: no reward in their code, so no component applies (score None).
    Equal to theirs on every well-formed response (one answer block, 0 <= start < end <=
    duration). Departures: a reversed interval scores IoU 0 and an out-of-range one is
    clamped to [0, duration] first (theirs scores both as written); the answer read is the
    last block (theirs: the first); an mcq answer must name exactly one letter. Some
    revisions of their code weight 0.9 * IoU + 0.1 * format; we follow the paper's 0.5/0.5.

videochat_r1 (VideoChat-R1; rewards summed unweighted):
    tvg: format + IoU of the last "S to E" / "S and E" in the last answer (seconds).
    mcq: format + accuracy.
    gqa: format (with the `<glue>` block, which must hold a valid interval list) + accuracy
         + IoU of the merged glue intervals.
    track: format (with a box list of the right length) + mean box IoU.
    Departures: as above (clamping, reversed -> 0, one unambiguous letter); tracking needs
    len(sample.boxes) boxes where theirs needs exactly 8; the gqa format also needs the
    answer letter to parse.

vidrl (default): format is a shaping term at half the weight of the content reward on
every task: 0.5 * format ("tags") + 1.0 * (tvg_iou with any interval style | mcq_accuracy
| gqa_accuracy + gqa_iou | track_iou).

`think=False` swaps each thinking grammar for its no-thinking twin ("tags" ->
"answer_only", "tags+task" -> "answer_only+task", "tags_json_tvg" -> "answer_json_tvg").
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
        _part("tvg_iou", ["tvg"], weight=0.5, style="json", normalize=True),
        _format(["mcq"], "tags", weight=0.5, strip=False),
        _part("mcq_accuracy", ["mcq"], weight=0.5),
    ]


def _videochat_r1() -> list[Component]:
    return [
        _format(["tvg", "mcq"], "tags"),
        _format(["gqa", "track"], "tags+task"),
        _part("tvg_iou", ["tvg"], style="to"),
        _part("mcq_accuracy", ["mcq"]),
        _part("gqa_accuracy", ["gqa"]),
        _part("gqa_iou", ["gqa"]),
        _part("track_iou", ["track"]),
    ]


def _vidrl() -> list[Component]:
    return [
        _format(None, "tags", weight=0.5),
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
