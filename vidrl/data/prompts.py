"""Chat prompts for each task, and the reference response an SFT step trains on.

The system instruction asks for reasoning inside <think> and the answer inside
<answer> (the papers' R1 format); `think=False` asks for the answer alone, the
"without thinking" arm of Temporal-R1's table. Each task states its answer format in
the user turn, the exact string `vidrl.data.answers.render_*` writes for a correct answer,
so the format reward, the SFT target and the evaluation parser all agree.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from vidrl.configbase import StrictConfig
from vidrl.data.answers import (
    render_answer,
    render_gqa,
    render_mcq,
    render_response,
    render_track,
    render_tvg,
)
from vidrl.data.sample import Sample

SYSTEM_THINK = (
    "You are a video assistant. First think about the question step by step inside "
    "<think> </think>, then give the final answer inside <answer> </answer>."
)
SYSTEM_DIRECT = (
    "You are a video assistant. Give the final answer inside <answer> </answer>, with no explanation."
)

Message = dict[str, Any]


class PromptConfig(StrictConfig):
    think: bool = True
    """Ask for reasoning inside <think> before the answer (False: answer directly)."""
    tvg_answer_style: Literal["json", "to"] = "json"
    """Grounding answer format: Temporal-R1's JSON {"start_time", "end_time"} or VideoChat-R1's "S to E"."""
    system_prompt: str | None = None
    """Replaces the built-in system instruction when set."""


class ChatTemplater(Protocol):
    """What renders messages into text: a transformers tokenizer or processor."""

    def apply_chat_template(self, conversation: list[Message], **kwargs: Any) -> Any: ...


def task_instruction(sample: Sample, cfg: PromptConfig) -> str:
    """The user-turn text: the question, the options if any, and the answer format."""
    length = f"The video is {sample.duration:.1f} seconds long."
    if sample.task == "tvg":
        example = render_tvg(12.5, 17.0, cfg.tvg_answer_style)
        return (
            f"{length} Find the start and end time, in seconds, of this event: "
            f'"{sample.question}". Answer in the form {example}.'
        )
    options = "\n".join(f"({chr(ord('A') + i)}) {text}" for i, text in enumerate(sample.options))
    if sample.task == "mcq":
        return f"{sample.question}\n{options}\nAnswer with the option's letter, e.g. {render_mcq('A')}."
    if sample.task == "gqa":
        example = render_gqa("A", [(3.0, 7.5)])
        return (
            f"{length} {sample.question}\n{options}\nAnswer with the option's letter and the "
            f"time intervals that support it, in the form {example}."
        )
    example = render_track([(0.1, 0.2, 0.3, 0.4)] * 2)
    return (
        f"{length} {sample.question}\nGive the object's box [x0, y0, x1, y1], normalised to 0-1, "
        f"at {len(sample.boxes)} evenly spaced times, as a list such as {example}."
    )


def build_messages(sample: Sample, cfg: PromptConfig) -> list[Message]:
    """Chat messages with one video placeholder, in the transformers/vLLM content format."""
    system = cfg.system_prompt or (SYSTEM_THINK if cfg.think else SYSTEM_DIRECT)
    return [
        {"role": "system", "content": [{"type": "text", "text": system}]},
        {
            "role": "user",
            "content": [{"type": "video"}, {"type": "text", "text": task_instruction(sample, cfg)}],
        },
    ]


def render_prompt(sample: Sample, cfg: PromptConfig, templater: ChatTemplater) -> str:
    """The prompt text with the chat template applied, ready for generation."""
    text = templater.apply_chat_template(
        build_messages(sample, cfg), tokenize=False, add_generation_prompt=True
    )
    return str(text)


def reference_response(sample: Sample, cfg: PromptConfig) -> str:
    """The SFT target: a short reasoning stub (when thinking) and the correct answer."""
    tail = render_answer(sample, cfg.tvg_answer_style)
    think = f"I watch the video and look for: {sample.question}" if cfg.think else None
    return render_response(tail, think)
