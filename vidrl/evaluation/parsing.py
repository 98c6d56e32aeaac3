"""Turn a model's free-text prediction into a [start, end] interval in seconds.

Three parsers with one signature, `(text, duration) -> (start, end) | None`:

- `parse_tags`: the strict format vidrl trains for (`<answer>` holding a JSON object or
  "S to E"). It scores what the reward scores, so eval numbers mean what training optimised.
- `parse_lmms`: lmms-eval's charades_sta post-processing, reproduced exactly (quirks
  included), so a model's numbers compare with published tables computed with lmms-eval.
  `lmms_metrics` is that task's metric over the IoUs. This is their current code (utils.py
  as rewritten in May 2026: clock ranges first, all sentences when none has a keyword);
  tables from 2025 were computed with their older `eval_tvg.py`, which reads some answers
  differently.
- `parse_free`: vidrl's own reader of free text. It reads intervals lmms-eval misses or
  misreads, so its numbers are higher than lmms-eval's and NOT comparable with published
  tables; use it to see what a model meant, not to fill a table.

None means "no interval could be read"; the metrics count it as IoU 0 and report it apart.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from vidrl.data.answers import extract_answer, parse_interval
from vidrl.data.sample import Interval
from vidrl.evaluation.metrics import R1_THRESHOLDS

IntervalParser = Callable[[str, float], Interval | None]
"""`(prediction text, video duration in seconds) -> (start, end) | None`."""


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


# --- lmms: lmms-eval's charades_sta (lmms_eval/tasks/charades_sta/utils.py), exactly -------
# An example from an older version of their prompt; the current prompt's example ("24.3 -
# 30.4 seonds") is not removed.
_LMMS_ECHO = "a specific example is : 20.8 - 30.0 seconds"
# Their list also has "starts", "ends", "happens in", "start time", "end time": each contains
# one of these, so testing these three is the same test.
_LMMS_KEYWORDS = ("start", "end", "happen")
_LMMS_SENTENCE_BREAK = re.compile(r"[!?\n]")
_LMMS_CLOCK = r"\d{1,2}:\d{2}(?::\d{2})?"
_LMMS_NUMBER = r"\d+(?:\.\d+)?"
_LMMS_DASH = "\\s*[\u2013-]\\s*"
# `(?<!\d)` only keeps the scan linear: a first match never starts inside a run of digits
# (one starting at the run's first digit would come earlier), so no result changes.
_LMMS_CLOCK_RANGE = re.compile(rf"\b({_LMMS_CLOCK}){_LMMS_DASH}({_LMMS_CLOCK})\b")
_LMMS_RANGE = re.compile(rf"(?<!\d)({_LMMS_NUMBER}){_LMMS_DASH}({_LMMS_NUMBER})")
_LMMS_CLOCK_TIME = re.compile(rf"\b({_LMMS_CLOCK})\b")
_LMMS_WHOLE_NUMBER = re.compile(rf"\b({_LMMS_NUMBER})\b")
_LMMS_SECONDS_RANGE = re.compile(rf"(?<!\d)({_LMMS_NUMBER})\s*s?{_LMMS_DASH}({_LMMS_NUMBER})")


def parse_lmms(text: str, duration: float) -> Interval | None:
    """The interval lmms-eval's charades_sta `extract_time` reads from `text`, or None.

    What lmms-eval does, quirks included (each one is theirs, kept on purpose):
    - the whole text is lowercased, one echoed prompt example is deleted, and then EVERY
      "to" becomes "-", inside words too ("photo" -> "pho-", "stop" -> "s-p"), so
      "from 2 to 5" is the range "2 - 5";
    - sentences are split on "!", "?" and newlines only (a "." is the decimal point);
    - the candidates are the sentences containing "start", "end" or "happen" as substrings
      ("weekend", "happened" count); only when none does are all sentences candidates, and
      nothing outside the candidates is ever read;
    - then the first rule that finds something wins, scanning candidates in order:
      1. the first clock range ("0:05 - 0:09", "00:01:05 - 00:01:10") in the first sentence
         holding one; a clock is h:mm:ss or m:ss, whole seconds only;
      2. the first `a - b` number range ("-" or an en dash) of the first sentence holding
         one, with no word boundary asked for ("2023-01-05" reads as (2023, 1));
      3. the first two clock times of all candidates together;
      4. the FIRST number of each candidate sentence, taken from the first two sentences
         that hold one: "starts at 3 and ends at 7" (one sentence) gives nothing; a number
         must stand alone as a word, so "3s" is no number and "3.5s" reads as 3;
      5. an `a s - b` range (an "s" allowed between the first number and the dash);
    - the pair is swapped when end <= start; it is not clamped to the video.
    `duration` is checked but otherwise unused; it keeps the signature of `parse_tags`.

    One departure: a number so long that it overflows to inf gives None. lmms-eval reads it,
    scores IoU 0 and does not log it as a bad prediction; here it scores IoU 0 as well, but
    is counted as unparsed, so a predictions file stays finite JSON.
    """
    _check_duration(duration)
    lowered = text.lower().replace(_LMMS_ECHO, "").replace("to", "-")
    sentences = _LMMS_SENTENCE_BREAK.split(lowered)
    candidates = [s for s in sentences if any(word in s for word in _LMMS_KEYWORDS)]
    candidates = candidates or sentences
    pair = (
        _lmms_first_range(_LMMS_CLOCK_RANGE, candidates, _clock_seconds)
        or _lmms_first_range(_LMMS_RANGE, candidates, float)
        or _lmms_first_two(_lmms_clock_times(candidates))
        or _lmms_first_two(_lmms_leading_numbers(candidates))
        or _lmms_first_range(_LMMS_SECONDS_RANGE, candidates, float)
    )
    if pair is None or not all(math.isfinite(t) for t in pair):
        return None
    start, end = pair
    return (start, end) if end > start else (end, start)


def lmms_metrics(ious: Sequence[float]) -> dict[str, float | int]:
    """lmms-eval's charades_sta metric: mIoU and R1@0.3/0.5/0.7 in percent, and `n`.

    The same keys as `vidrl.evaluation.metrics.grounding_metrics`, computed as lmms-eval
    computes them: a threshold counts only when IoU >= t exactly (vidrl's own metric allows
    1e-9 of rounding), and an empty list gives zeros. Unparsed predictions are IoU 0 in
    `ious`, as lmms-eval scores them.

    Not reproduced: lmms-eval collects predictions in a dict keyed by video, caption and
    ground truth, so samples repeated exactly in the data count once there; here every
    row counts.
    """
    n = len(ious)
    metrics: dict[str, float | int] = {"mIoU": sum(ious) * 100 / n if n else 0.0}
    for threshold in R1_THRESHOLDS:
        hits = sum(1 for iou in ious if iou >= threshold)
        metrics[f"R1@{threshold}"] = hits * 100 / n if n else 0.0
    metrics["n"] = n
    return metrics


def _lmms_first_range(
    pattern: re.Pattern[str], sentences: list[str], seconds: Callable[[str], float]
) -> Interval | None:
    for sentence in sentences:
        match = pattern.search(sentence)
        if match:
            return (seconds(match[1]), seconds(match[2]))
    return None


def _lmms_clock_times(sentences: list[str]) -> list[float]:
    return [_clock_seconds(m[1]) for s in sentences for m in _LMMS_CLOCK_TIME.finditer(s)]


def _lmms_leading_numbers(sentences: list[str]) -> list[float]:
    found = (_LMMS_WHOLE_NUMBER.search(s) for s in sentences)
    return [float(match[1]) for match in found if match]


def _lmms_first_two(times: list[float]) -> Interval | None:
    return (times[0], times[1]) if len(times) >= 2 else None


def _clock_seconds(clock: str) -> float:
    """'m:ss' or 'h:mm:ss' -> seconds (whole numbers: the clock pattern has no fractions)."""
    parts = [float(part) for part in clock.split(":")]
    if len(parts) == 3:
        return parts[0] * 3600 + parts[1] * 60 + parts[2]
    return parts[0] * 60 + parts[1]


# --- free: vidrl's own free-text reader -------------------------------------------------------
# lmms-eval's prompt example, which models echo; it must not be read as the answer.
_ECHOED_EXAMPLE = "a specific example is : 20.8 - 30.0 seconds"
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


def parse_free(text: str, duration: float) -> Interval | None:
    """The first interval found in free text by vidrl's own rules (not lmms-eval's).

    Tried in order: a clock-time range, then an `a - b` number range (each first in sentences
    that mention start/end/happen, then anywhere), then the first two times in those sentences.
    A reversed pair is swapped; the interval is not clamped. `duration` is checked but
    otherwise unused.

    It reads what `parse_lmms` misses or misreads, so it scores higher than lmms-eval on the
    same predictions (8 mIoU points on one set of 308 free-text outputs): never put its
    numbers beside a published table. What it does differently:
    - "to" becomes "-" only when no letter touches it ("photo" and "stop" stay words);
    - clock times may carry fractions of a second ("0:07.5 - 0:12");
    - a range may name its unit on the left ("3 seconds - 7 seconds"); en/em dashes count;
    - without a range, ALL numbers of the start/end/happen sentences are taken in order and
      the first two paired, so "starts at 3s and ends at 7s", one sentence, gives (3, 7);
    - ranges are looked for anywhere when the keyword sentences hold none;
    - a number that overflows to inf gives None.
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


INTERVAL_PARSERS: dict[str, IntervalParser] = {
    "tags": parse_tags,
    "lmms": parse_lmms,
    "free": parse_free,
}
"""Parse mode name -> the parser that reads a grounding prediction."""
