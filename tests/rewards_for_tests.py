"""A reward for pipeline tests on the untrained tiny model: its responses are random tokens,
which every real reward scores 0; the share of digit characters differs from response to
response, so groups have spread (or, by chance, none) for the online gate to judge."""

from __future__ import annotations

from vidrl.data.sample import Sample


def digit_share(response: str, sample: Sample) -> float:
    """Fraction of the response's characters that are digits (0 for an empty response)."""
    return sum(c.isdigit() for c in response) / max(len(response), 1)
