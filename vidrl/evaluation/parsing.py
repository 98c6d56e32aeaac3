"""Turn a model's free-text prediction into a [start, end] interval in seconds.

Two parsers with one signature, `(text, duration) -> (start, end) | None`:

- `parse_tags`: the strict format vidrl trains for (`<answer>` holding a JSON object or
  "S to E"). It scores what the reward scores, so eval numbers mean what training optimised.
- `parse_lmms`: lmms-eval's charades_sta conventions for free text, so numbers of models that
  were never trained on our tags compare with published tables.

None means "no interval could be read"; the metrics count it as IoU 0 and report it apart.

Where `parse_lmms` departs from lmms-eval's `extract_time` (each change aims to read
the interval a human reader would see, where theirs misses it or reads another one):
- "to" becomes "-" only when no letter touches it (theirs also rewrites "photo" and "stop");
- clock ranges ("00:01:05 - 00:01:10") are tried before plain number ranges (theirs reads
  "05 - 00" out of that string), and clock times may carry fractions of a second;
- a range may name its unit on the left ("3 seconds - 7 seconds"), and en/em dashes count as "-";
- when no range is found, every number of the sentences that mention start/end/happen is taken
  in order and the first two are paired (theirs takes one number per sentence, so "starts at
  3s and ends at 7s", a single sentence, gives nothing);
- ranges, too, are looked for in those sentences first (theirs takes the first range anywhere,
  so "Clips 1 - 2! It happens 5 - 8" reads as (1, 2) there and (5, 8) here);
- a number that overflows to inf gives None.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from vidrl.data.answers import extract_answer, parse_interval
from vidrl.data.sample import Interval

IntervalParser = Callable[[str, float], Interval | None]
"""`(prediction text, video duration in seconds) -> (start, end) | None`."""

# lmms-eval's prompt shows this example; models often echo it, and it must not be read as the
# answer.
_ECHOED_EXAMPLE = "a specific example is : 20.8 - 30.0 seconds"
# lmms-eval's keyword list; its longer entries ("starts", "start time", ...) contain these.
_KEYWORDS = ("start", "end", "happen")
# "." is not a sentence break: it is also the decimal point.
_SENTENCE_BREAK = re.compile(r"[!?\n]")
# "to" not inside a word: "15to20" is a range, "photo" and "stop" are not.
_WORD_TO = re.compile(r"(?<![a-z])to(?![a-z])")
_LONG_DASH = re.compile("[\u2013\u2014]")

_CLOCK = r"\d{1,2}(?::\d{2}){1,2}(?:\.\d+)?"
_NUMBER = r"\d+(?:\.\d+)?"
# The look-arounds keep a match from starting or ending inside a longer number or clock time.
_BEFORE = r"(?<![\d:.])"
_AFTER = r"(?![\d:]|\.\d)"
_UNIT = r"(?:\s*(?:s|secs?|seconds?)\b)?"
_CLOCK_RANGE = re.compile(rf"{_BEFORE}({_CLOCK})\s*-\s*({_CLOCK}){_AFTER}")
_NUMBER_RANGE = re.compile(rf"{_BEFORE}({_NUMBER}){_AFTER}{_UNIT}\s*-\s*({_NUMBER}){_AFTER}")
_TIME = re.compile(rf"{_BEFORE}(?:{_CLOCK}|{_NUMBER}){_AFTER}")


def parse_tags(text: str, duration: float) -> Interval | None:
    """The interval in the last `<answer>`, clamped to [0, duration].

    The answer is read by `parse_interval(..., "any")`: a JSON object with start_time and
    end_time, "S to E", "S and E" or "S - E". A reversed pair is a wrong answer, not a typo to
    repair: a strict-format model was trained to write start first, so it gets None. Times
    past either end of the video are clamped, so an interval wholly after the end becomes
    (duration, duration), IoU 0.
    """
    _check_duration(duration)
    answer = extract_answer(text)
    if answer is None:
        return None
    pair = parse_interval(answer, "any")
    if pair is None:
        return None
    start, end = pair
    if not (math.isfinite(start) and math.isfinite(end)) or start > end:
        return None
    return (min(max(start, 0.0), duration), min(max(end, 0.0), duration))


def parse_lmms(text: str, duration: float) -> Interval | None:
    """The first interval found in free text, the way lmms-eval's charades_sta reads it.

    Tried in order: a clock-time range, then an `a - b` number range (each first in sentences
    that mention start/end/happen, then anywhere), then the first two times in those sentences.
    A reversed pair is swapped. Not clamped: lmms-eval does not clamp, and clipping an interval
    that runs past the end would raise its IoU above the published numbers. `duration` is
    checked but otherwise unused; it keeps the signature of `parse_tags`.
    """
    _check_duration(duration)
    lowered = text.lower().replace(_ECHOED_EXAMPLE, "")
    lowered = _LONG_DASH.sub("-", _WORD_TO.sub("-", lowered))
    sentences = _SENTENCE_BREAK.split(lowered)
    preferred = [s for s in sentences if any(word in s for word in _KEYWORDS)]
    pair = (
        _first_range(_CLOCK_RANGE, preferred, sentences)
        or _first_range(_NUMBER_RANGE, preferred, sentences)
        or _first_two_times(preferred)
    )
    # A run of hundreds of digits overflows to inf: no interval a reader would see.
    if pair is None or not all(math.isfinite(t) for t in pair):
        return None
    start, end = pair
    return (start, end) if start <= end else (end, start)


def _first_range(pattern: re.Pattern[str], *scopes: list[str]) -> Interval | None:
    for scope in scopes:
        for sentence in scope:
            match = pattern.search(sentence)
            if match:
                return (_seconds(match.group(1)), _seconds(match.group(2)))
    return None


def _first_two_times(sentences: list[str]) -> Interval | None:
    times = [_seconds(token) for s in sentences for token in _TIME.findall(s)]
    return (times[0], times[1]) if len(times) >= 2 else None


def _seconds(token: str) -> float:
    """'12.5' -> 12.5; 'mm:ss' and 'hh:mm:ss' (seconds may have a fraction) -> seconds."""
    total = 0.0
    for part in token.split(":"):
        total = total * 60.0 + float(part)
    return total


def _check_duration(duration: float) -> None:
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"duration must be a positive number of seconds, got {duration!r}")


INTERVAL_PARSERS: dict[str, IntervalParser] = {"tags": parse_tags, "lmms": parse_lmms}
"""Parse mode name -> the parser that reads a grounding prediction."""
