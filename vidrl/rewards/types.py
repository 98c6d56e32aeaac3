"""The reward contract: a reward is a plain function over a batch.

    fn(batch: list[RewardInput]) -> list[RewardScore | None]

`None` means "not applicable to this sample" (say, a tracking reward asked about a
multiple-choice question); the composition then leaves that component out for that
sample instead of counting it as zero. Builtin and user rewards follow the same contract
and register the same way (`vidrl.rewards.registry`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from vidrl.data.sample import Sample


@dataclass(frozen=True, slots=True)
class RewardInput:
    """One model response together with the ground truth it is scored against.

    response_tokens: the response's length in tokens as sampled (None where it is not known,
    e.g. responses read from a file); length rewards such as `overlong_penalty` read it.
    """

    sample: Sample
    response: str
    response_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class RewardScore:
    """A scalar total plus the named parts it was made of (each reported on its own)."""

    total: float
    components: Mapping[str, float] = field(default_factory=dict)


RewardFn = Callable[[list[RewardInput]], list[RewardScore | None]]
