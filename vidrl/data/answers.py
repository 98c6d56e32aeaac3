"""Answer formats of every task: how a perfect answer is written, and how one is read back.

Prompts use the renderers for SFT targets, rewards and evaluation use the parsers, so the
two sides can never drift apart (`parse_*(render_*(x)) == x`). Nothing here scores: the
reward logic lives in `vidrl.rewards`.

What a model writes inside `<answer>...</answer>`:
- tvg:   `{"start_time": "12.5", "end_time": "20.25"}` (Temporal-R1) or `12.5 to 20.25`
         (VideoChat-R1).
- mcq:   `B` (read back also from "(B)", "B. text", "[B]", "B - text": `parse_letter`).
- gqa:   `B`, followed OUTSIDE the answer by `<glue>[(12.5, 20.25), ...]</glue>`
         (VideoChat-R1's grammar), so `render_gqa` returns the whole tagged tail.
- track: `[[x0, y0, x1, y1], ...]`, one normalised box per sampled frame.

Every parser is total: any string gives a value or None, never an exception, and it runs
in time linear in the input (possessive quantifiers and anchored scans instead of
backtracking patterns, since responses are untrusted model output). Parsers return raw
values (an interval may be reversed or outside the video); callers decide what to do.

Where we depart from the references, and the switches that reproduce them:
- `extract_answer` takes the LAST complete `<answer>` block by default; `block="first"`
  reads the first one, as Temporal-R1 and VideoChat-R1's QA reward do (`re.search`), and
  `block="last_found"` the last of the blocks a left-to-right scan finds, as VideoChat-R1's
  grounding reward does (`re.findall(...)[-1]`). All three agree on a response with one
  answer; "last" and "last_found" differ only when an opening tag sits inside a block.
- The "json" interval style also accepts unquoted numbers (`{"start_time": 1.5, ...}`); the
  strict quoted form is checked by the format reward, not here. String values must be plain
  decimals ("1e3", "nan", "inf" and "1_0" are rejected). `numbers="float"` reads the
  values exactly as Temporal-R1 does, with Python's `float` ("5.000e-01", "1_0", true).
- `parse_glue` reads `[(s, e), ...]` or `[[s, e], ...]` loosely; `parse_videochat_glue` is
  VideoChat-R1's strict grammar (their regex plus `ast.literal_eval`).
- `parse_letter` demands exactly one option letter; VideoChat-R1 takes the first capital
  A-G anywhere, which scores "A or B" as A (and, like ours, "[B]" and "B - text" as B).
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal

from vidrl.data.sample import Box, Interval, Sample

IntervalStyle = Literal["json", "to", "any"]
"""json: Temporal-R1's JSON object; to: VideoChat-R1's last `S to E` / `S and E`;
any: json, then a JSON object embedded in text, then `S to E`, then `S - E`."""
NumberSyntax = Literal["decimal", "float"]
"""How the start_time / end_time values of a JSON answer are read: decimal: numbers, or
strings holding a plain decimal (vidrl); float: Python's `float` of the value, as
Temporal-R1 reads it ("5.000e-01", " 1_0 ", "+2", 3 and true all count)."""
LetterForms = Literal["all", "basic"]
"""How `parse_letter` lets a letter be written. basic: "B", "(B)", "B.", "B) text",
"B: text"; all: those, and "[B]" and "B - text" (a spaced hyphen, en or em dash), two forms
real models write. Evaluation with `--parse lmms` keeps "basic" so its numbers do not move."""
AnswerBlock = Literal["last", "first", "last_found"]
"""Which complete `<answer>` block is read: last: the last closing tag and the innermost
opening before it (vidrl); first: the first opening tag and the first closing tag after it
(`re.search(r"<answer>(.*?)</answer>", DOTALL)`); last_found: the last block of a
left-to-right scan (`re.findall` of that pattern, last element)."""

# Decimal number, signed; possessive so a long run of digits is scanned once.
_NUM = r"[-+]?+(?:\d++(?:\.\d*+)?+|\.\d++)"
# VideoChat-R1's `(\d+\.?\d*) (to|and) (\d+\.?\d*)`, case-insensitive as theirs. The
# lookbehind and possessive quantifiers only remove backtracking: a space must follow each
# number, so the greedy match is the only one that can succeed, and a match starting
# inside a run of digits implies one starting at the run's first digit.
_TO_RANGE = re.compile(r"(?<!\d)(\d++\.?+\d*+) (?:to|and) (\d++\.?+\d*+)", re.IGNORECASE)
_DASH_RANGE = re.compile(r"(?<![\d.\-])(\d++(?:\.\d++)?+)\s*+[-\u2013]\s*+(\d++(?:\.\d++)?+)")
_FLAT_OBJECT = re.compile(r"\{[^{}]*+\}")
_DECIMAL_STRING = re.compile(rf"\s*+({_NUM})\s*+")
_COMMA = r"\s*+,\s*+"
_PAIR = re.compile(rf"[(\[]\s*+({_NUM}){_COMMA}({_NUM})\s*+[)\]]")
_QUAD = re.compile(rf"[(\[]\s*+({_NUM}){_COMMA}({_NUM}){_COMMA}({_NUM}){_COMMA}({_NUM})\s*+[)\]]")
# VideoChat-R1's glue list: their regex `^\[(\(N,\s*N\)(,\s*\(N,\s*N\))*(,)?|)\]$`, N =
# `\d+(\.\d+)?`, narrowed to what `ast.literal_eval` then accepts: ASCII digits, and only
# the whitespace Python's tokenizer skips. `$` also matches before one final newline.
_VC_NUM = r"([0-9]++(?:\.[0-9]++)?+)"
_VC_PAIR = rf"\({_VC_NUM},[ \t\n\r\f]*+{_VC_NUM}\)"
_VC_GLUE = re.compile(rf"\[(?:{_VC_PAIR}(?:,[ \t\n\r\f]*+{_VC_PAIR})*+,?+)?+\]\n?+")
_VC_GLUE_PAIR = re.compile(_VC_PAIR)

# "The answer is", "Answer:", "The correct option is:", "Option", "Final answer -" ...
_LETTER_PREFIX = re.compile(
    r"(?:the\s++)?(?:(?:correct|best|final|right)\s++)?(?:answer|option|choice)"
    r"(?:\s++is)?+\s*+[:\-]?\s*+",
    re.IGNORECASE,
)
# Each pattern matches the chosen letter and what closes it; a bare letter must be closed by
# the end or by `.`, `)` or `:` ("B", "B.", "B) text"), otherwise "A man walks" would read as
# option A. The "all" forms add "[B]" and "B - text": a dash (hyphen, en or em dash) with
# space on both sides and text after it, so "A-B" and "B -" stay unread.
_DASH = "[\\-\u2013\u2014]"
_LEAD_LETTER = {
    "basic": re.compile(r"\(([A-Z])\)|([A-Z])(?:$|[.):])"),
    "all": re.compile(rf"\(([A-Z])\)|\[([A-Z])\]|([A-Z])(?:$|[.):]|\s++{_DASH}\s++(?=\S))"),
}
# What follows the chosen letter must not be a second choice: "A. or B", "(A) (B)", "A) B)";
# with the "all" forms also "[A] or [B]", "[A][B]" and ranges such as "A - B" or "A - B - C".
_SECOND_CHOICE = {
    "basic": re.compile(r"[\s.,;:/&|)]*+(?:(?i:or|and)\s++)?\(?[A-Z]\)?(?=\s*$|[.,;:)/&|]|\s+(?i:or|and)\b)"),
    "all": re.compile(
        r"[\s.,;:/&|)\]\-\u2013\u2014]*+(?:(?i:or|and)\s++)?[(\[]?[A-Z][)\]]?"
        rf"(?=\s*$|[.,;:)\]/&|]|\s+(?i:or|and)\b|\s++{_DASH}(?:\s|$))"
    ),
}


def extract_answer(text: str, block: AnswerBlock = "last") -> str | None:
    """Content of one complete `<answer>...</answer>` block (see `AnswerBlock`), stripped;
    None if there is none."""
    body = find_block(text, "answer", block)
    return None if body is None else body.strip()


def find_block(text: str, tag: str, block: AnswerBlock = "last") -> str | None:
    """Raw (unstripped) content of one complete `<tag>...</tag>` block, or None.

    Plain scans, linear in the text; see `AnswerBlock` for which block each choice reads.
    """
    if block == "first":
        return _first_block(text, tag)
    if block == "last_found":
        return _last_found_block(text, tag)
    return _last_block(text, tag)


def parse_interval(
    answer: str, style: IntervalStyle, numbers: NumberSyntax = "decimal"
) -> tuple[float, float] | None:
    """The (start, end) pair in seconds written in an answer, or None.

    The pair is returned as written: it may be reversed or outside the video. Non-finite
    numbers (nan, inf, overflowing literals) give None.
    """
    read = _python_float if numbers == "float" else _json_seconds
    if style == "json":
        return _interval_from_json(answer, read)
    if style == "to":
        return _last_range(_TO_RANGE, answer)
    if style == "any":
        for parse in (_interval_from_json, _interval_from_embedded_json):
            pair = parse(answer, read)
            if pair is not None:
                return pair
        return _last_range(_TO_RANGE, answer) or _last_range(_DASH_RANGE, answer)
    return None


def parse_letter(answer: str, num_options: int | None = None, forms: LetterForms = "all") -> str | None:
    """The single option letter an answer chooses, or None.

    Accepts "B", "(B)", "B.", "B) text", "(B) text", "The answer is B", "Answer: (B)", and
    with `forms="all"` (the default) "[B]" and "B - text" (see `LetterForms`). Rejects empty
    answers, lowercase letters, and anything naming a second choice ("A or B", "A, B",
    "(A) (B)", "[A] or [B]", "A - B"). The text after a letter is not compared with the
    option's text, for any form. With `num_options`, the letter must be one of the first
    `num_options` letters.
    """
    text = answer.strip().strip("*`'\"").strip()
    prefix = _LETTER_PREFIX.match(text)
    if prefix is not None:
        text = text[prefix.end() :]
    lead = _LEAD_LETTER[forms].match(text)
    if lead is None:
        return None
    # One group per way of writing it: the last group that took part holds the letter.
    letter = lead[lead.lastindex or 0]
    if _SECOND_CHOICE[forms].match(text, lead.end()):
        return None
    if num_options is not None and ord(letter) - ord("A") >= num_options:
        return None
    return letter


def parse_glue(text: str) -> list[tuple[float, float]]:
    """Supporting intervals from the last `<glue>[(s, e), ...]</glue>` block of a response.

    Accepts `[(s, e), ...]` and `[[s, e], ...]`; pairs are returned as written (possibly
    reversed). No block, or a pair with a non-finite number, gives an empty list.
    """
    body = _last_block(text, "glue")
    if body is None:
        return []
    pairs = [_finite(m[1], m[2]) for m in _PAIR.finditer(body)]
    if any(pair is None for pair in pairs):
        return []
    return [(pair[0], pair[1]) for pair in pairs if pair is not None]


def parse_videochat_glue(body: str) -> list[tuple[float, float]] | None:
    """The pairs of a glue block body in VideoChat-R1's strict grammar, or None if invalid.

    Valid exactly when their `is_valid_two_d_list_format` is true: `[(s, e), ...]` with
    round brackets, unsigned decimals (no exponent; an integer may not have a leading zero,
    "01", which Python's parser rejects), whitespace only after commas, an optional trailing
    comma and final newline, every pair s <= e; `[]` is valid. The body is not stripped.
    """
    if _VC_GLUE.fullmatch(body) is None:
        return None
    pairs = []
    for match in _VC_GLUE_PAIR.finditer(body):
        start, end = _literal_number(match[1]), _literal_number(match[2])
        if start is None or end is None or start > end:
            return None
        pairs.append((_unsigned_float(start), _unsigned_float(end)))
    return pairs


def parse_boxes(answer: str) -> list[Box] | None:
    """Boxes `[x0, y0, x1, y1]` listed in an answer, in order; None if there are none.

    Brackets may be square or round; the numbers are returned as written (not clamped).
    A box with a non-finite number makes the whole answer unreadable (None).
    """
    boxes: list[Box] = []
    for match in _QUAD.finditer(answer):
        box = _finite(match[1], match[2], match[3], match[4])
        if box is None:
            return None
        boxes.append((box[0], box[1], box[2], box[3]))
    return boxes or None


def render_tvg(start: float, end: float, style: Literal["json", "to"] = "json") -> str:
    """The answer body for a grounding sample, seconds with one or two decimals."""
    s, e = format_seconds(start), format_seconds(end)
    if style == "json":
        return f'{{"start_time": "{s}", "end_time": "{e}"}}'
    return f"{s} to {e}"


def render_mcq(letter: str) -> str:
    """The answer body for a multiple-choice sample: the bare letter."""
    return _checked_letter(letter)


def render_gqa(letter: str, intervals: Sequence[Interval]) -> str:
    """The tagged tail of a grounded-QA response: `<answer>B</answer><glue>[...]</glue>`.

    Unlike the other renderers this includes the tags, because the supporting intervals
    live outside `<answer>` (VideoChat-R1's grammar).
    """
    pairs = ", ".join(f"({format_seconds(s)}, {format_seconds(e)})" for s, e in intervals)
    return f"<answer>{_checked_letter(letter)}</answer><glue>[{pairs}]</glue>"


def render_track(boxes: Sequence[Box]) -> str:
    """The answer body for a tracking sample: `[[x0, y0, x1, y1], ...]`, up to 3 decimals."""
    rendered = (", ".join(_format_decimal(v, 3) for v in box) for box in boxes)
    return "[" + ", ".join(f"[{inner}]" for inner in rendered) + "]"


def render_answer(sample: Sample, tvg_style: Literal["json", "to"] = "json") -> str:
    """The tagged tail of a perfect response to `sample`: `<answer>...</answer>`, plus the
    `<glue>` block for gqa. Use this (not `wrap_answer(render_gqa(...))`) for SFT targets."""
    if sample.task == "gqa":
        return render_gqa(sample.answer or "", sample.timestamps)
    if sample.task == "tvg":
        return wrap_answer(render_tvg(*sample.interval, style=tvg_style))
    if sample.task == "mcq":
        return wrap_answer(render_mcq(sample.answer or ""))
    return wrap_answer(render_track(sample.boxes))


def wrap_answer(body: str) -> str:
    """`<answer>body</answer>`."""
    return f"<answer>{body}</answer>"


def render_response(tail: str, think: str | None = None) -> str:
    """A whole response: `<think>think</think>` (when given) then the tagged tail."""
    return tail if think is None else f"<think>{think}</think>\n{tail}"


def format_seconds(seconds: float) -> str:
    """Seconds with one or two decimals: 12.0 -> "12.0", 12.5 -> "12.5", 12.25 -> "12.25"."""
    return _format_decimal(seconds, 2)


def _format_decimal(value: float, max_decimals: int) -> str:
    text = f"{value:.{max_decimals}f}".rstrip("0")
    if text.endswith("."):
        text += "0"
    return "0.0" if float(text) == 0 else text  # never "-0.0"


def _checked_letter(letter: str) -> str:
    if len(letter) != 1 or not "A" <= letter <= "Z":
        raise ValueError(f"an option letter is one of A..Z, got {letter!r}")
    return letter


def _last_block(text: str, tag: str) -> str | None:
    """Content of the last `<tag>...</tag>` pair, found with plain scans (linear time).

    The opening tag is the last one that still has a closing tag after it, and the block
    ends at the first closing tag after that opening.
    """
    opening, closing = f"<{tag}>", f"</{tag}>"
    last_close = text.rfind(closing)
    if last_close < 0:
        return None
    start = text.rfind(opening, 0, last_close)
    if start < 0:
        return None
    body_start = start + len(opening)
    return text[body_start : text.find(closing, body_start)]


def _first_block(text: str, tag: str) -> str | None:
    """From the first opening tag to the first closing tag after it (what `re.search` of
    `<tag>(.*?)</tag>` finds: if the first opening has no closing after it, none has)."""
    opening, closing = f"<{tag}>", f"</{tag}>"
    start = text.find(opening)
    if start < 0:
        return None
    body_start = start + len(opening)
    end = text.find(closing, body_start)
    return None if end < 0 else text[body_start:end]


def _last_found_block(text: str, tag: str) -> str | None:
    """The last block of a left-to-right scan, each starting after the previous one ends
    (the last element of `re.findall` of `<tag>(.*?)</tag>`)."""
    opening, closing = f"<{tag}>", f"</{tag}>"
    found, pos = None, 0
    while (start := text.find(opening, pos)) >= 0:
        end = text.find(closing, start + len(opening))
        if end < 0:
            break
        found, pos = text[start + len(opening) : end], end + len(closing)
    return found


def _interval_from_json(answer: str, read: Callable[[Any], float | None]) -> tuple[float, float] | None:
    """start_time and end_time of a JSON object, each read by `read`."""
    try:
        data = json.loads(answer)
    except (ValueError, RecursionError):  # also covers over-long integer literals
        return None
    if not isinstance(data, dict):
        return None
    start, end = read(data.get("start_time")), read(data.get("end_time"))
    if start is None or end is None:
        return None
    return start, end


def _python_float(value: Any) -> float | None:
    """`float(value)` as Temporal-R1 applies it to a JSON value (a string in any syntax
    `float` takes, a number, or a bool: true is 1.0); None where it raises or is not finite."""
    if not isinstance(value, str | int | float):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _literal_number(token: str) -> int | float | None:
    """An unsigned decimal token as Python's parser reads it: int or float; None for an
    integer with a leading zero ("01") or one too long for `int` (over 4,300 digits)."""
    if "." in token:
        return float(token)
    if token[0] == "0" and token.strip("0"):
        return None
    try:
        return int(token)
    except ValueError:
        return None


def _unsigned_float(number: int | float) -> float:
    # An integer literal beyond the float range (up to 4,300 digits are valid) is +inf.
    try:
        return float(number)
    except OverflowError:
        return math.inf


def _interval_from_embedded_json(
    answer: str, read: Callable[[Any], float | None]
) -> tuple[float, float] | None:
    for match in reversed(list(_FLAT_OBJECT.finditer(answer))):
        pair = _interval_from_json(match[0], read)
        if pair is not None:
            return pair
    return None


def _json_seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    if isinstance(value, str):
        match = _DECIMAL_STRING.fullmatch(value)
        if match is not None:
            pair = _finite(match[1])
            return None if pair is None else pair[0]
    return None


def _last_range(pattern: re.Pattern[str], text: str) -> tuple[float, float] | None:
    last = deque(pattern.finditer(text), maxlen=1)  # only the last match counts
    if not last:
        return None
    pair = _finite(last[0][1], last[0][2])
    return None if pair is None else (pair[0], pair[1])


def _finite(*texts: str) -> tuple[float, ...] | None:
    """The numbers, or None if any of them overflows to inf."""
    numbers = tuple(float(t) for t in texts)
    return numbers if all(math.isfinite(n) for n in numbers) else None
