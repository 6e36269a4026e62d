"""Reading numbers out of model responses and reference answers (GSM8K `#### N`, commas, fractions)."""

from __future__ import annotations

import re

THINK_ANSWER = re.compile(r"^\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*$", re.DOTALL)
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_FRAC = re.compile(r"\\d?frac\s*\{\s*(-?[\d.,]+)\s*\}\s*\{\s*(-?[\d.,]+)\s*\}")
# 1,234,567.5 | 1234.5 | .5 | -3 | 3/4 ; a comma only counts inside a number when it groups thousands
_NUMBER = re.compile(
    r"(?<![\w.])(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+)(?:\s*/\s*(\d+(?:\.\d+)?))?(?![\d])"
)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def well_formed(response: str) -> bool:
    """True when the response is exactly `<think>...</think> <answer>...</answer>`, each tag once."""
    if any(response.count(tag) != 1 for tag in _TAGS):
        return False
    return THINK_ANSWER.match(response) is not None


def answer_text(response: str) -> str:
    """The last `<answer>` block's content, else the whole response (the reference falls back the same way)."""
    found = ANSWER_TAG.findall(response)
    return found[-1] if found else response


def reference_answer(truth: object) -> str:
    """The final answer of a reference: the text after GSM8K's last `####`, else the whole text."""
    text = str(truth)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    return text.strip()


def parse_number(text: str) -> float | None:
    """The number a piece of text ends on: \\boxed{} content first, then the last number (commas, a/b,
    \\frac{a}{b}, a trailing % or $ ignored). None when there is no number."""
    boxed = _BOXED.findall(text)
    if boxed:
        text = boxed[-1]
    text = _FRAC.sub(lambda m: f"{m.group(1)}/{m.group(2)}", text)
    matches = list(_NUMBER.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    try:
        value = float(m.group(1).replace(",", ""))
        if m.group(2) is not None:
            denominator = float(m.group(2))
            if denominator == 0:
                return None
            value /= denominator
    except ValueError:
        return None
    return value


def numbers_equal(a: float, b: float, rel_tol: float = 1e-6) -> bool:
    """Equal up to rounding noise (0.1 + 0.2 == 0.3; 72 == 72.0)."""
    return abs(a - b) <= rel_tol * max(1.0, abs(a), abs(b))


def _normalise(text: str) -> str:
    return " ".join(text.strip().strip(".").lower().split())


def is_correct(response: str, truth: object) -> bool:
    """The response's answer equals the reference: as numbers when the reference is one, else as text."""
    expected = reference_answer(truth)
    given = answer_text(response)
    want = parse_number(expected)
    if want is not None:
        got = parse_number(given)
        return got is not None and numbers_equal(got, want)
    return bool(expected) and _normalise(given) == _normalise(expected)
