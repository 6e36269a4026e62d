"""Grading final answers of math problems: the `\\boxed{}` answer (or "the answer is ...", or the last
number), normalised, compared as text, as numbers, then symbolically.

The symbolic step is Hugging Face's math-verify (the grader Trinity-RFT's own rewards use): it parses LaTeX
into sympy and decides equality with timeouts, which beats a hand-written parser on the long tail of
answer forms (\\frac, intervals, sets, units). Without it, grading stops at the text and number checks.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from rft_runtime.workflows.answers import numbers_equal, parse_number


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (braces balanced), \\fbox{...} or `\\boxed x`, else None."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        if "\\boxed " in text:
            return text.split("\\boxed ")[-1].split("$")[0].strip()
        return None
    i = text.index("{", start)
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


_ANSWER_IS = (re.compile(r"(?:final|the)\s+answer\s+is\s*:?\s*(.+)", re.IGNORECASE), re.compile(r"答案是\s*:?\s*(.+)"))
_TEXT = re.compile(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}")


def normalise(answer: str) -> str:
    """An answer with its LaTeX dressing removed: $, spaces, \\left/\\right, \\dfrac, degrees, percent, a
    leading `x =`, a trailing period, \\text{} around words."""
    text = str(answer).strip()
    text = _TEXT.sub(r"\1", text)
    for old, new in (("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\left", ""), ("\\right", ""), ("\\dfrac", "\\frac"),
                     ("\\tfrac", "\\frac"), ("^{\\circ}", ""), ("^\\circ", ""), ("\\%", ""), ("%", ""), ("$", ""),
                     ("\\$", ""), (" ", ""), ("\n", "")):
        text = text.replace(old, new)
    if re.match(r"^[a-zA-Z]\w*=", text) and text.count("=") == 1:
        text = text.split("=", 1)[1]
    return text.rstrip(".").strip()


def extract_answer(text: str) -> str | None:
    """The final answer of a reply or reference (Qwen2.5-Math's rule): the last \\boxed{} content, else what
    follows "the answer is", else the last number; None when there is none."""
    if not isinstance(text, str):
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return normalise(boxed)
    for pattern in _ANSWER_IS:
        found = pattern.search(text)
        if found:
            return normalise(found.group(1))
    numbers = re.findall(r"[-+]?\d*\.?\d+", text.replace(",", ""))
    return numbers[-1] if numbers else None


def _symbolic_equal(a: str, b: str) -> bool:
    try:
        # ~0.4 s to import (sympy), and in the runtime extra only: the reward modules import this one
        from math_verify import parse, verify
    except ImportError:
        return False
    # math-verify times out with SIGALRM, which only the main thread may set: elsewhere it runs unbounded
    main = threading.current_thread() is threading.main_thread()
    limit: Any = 5 if main else None
    try:
        gold = parse(f"${b}$", parsing_timeout=limit)
        pred = parse(f"${a}$", parsing_timeout=limit)
        return bool(gold and pred and verify(gold, pred, timeout_seconds=limit))
    except Exception:  # a grader that cannot parse the answer calls it wrong, as Trinity's does
        return False


def equivalent(prediction: str | None, reference: str | None) -> bool:
    """Whether two extracted answers are the same: as text, as numbers (a/b, 1,000, 50%), or symbolically."""
    if prediction is None or reference is None:
        return False
    a, b = normalise(prediction), normalise(reference)
    if not a or not b:
        return False
    if a == b or a.lower() == b.lower():
        return True
    x, y = parse_number(a), parse_number(b)
    if x is not None and y is not None and "\\" not in a + b and re.fullmatch(r"[-+\d.,/]+", a + b):
        return numbers_equal(x, y)
    return _symbolic_equal(a, b)


def verify_math_answer(response_text: str, ground_truth: Any) -> tuple[float, dict[str, Any]]:
    """(1.0 or 0.0, details) for a reply against a reference answer, both read with extract_answer."""
    prediction = extract_answer(response_text)
    truth = extract_answer(str(ground_truth))
    correct = equivalent(prediction, truth)
    return (1.0 if correct else 0.0), {"parsed_prediction": prediction, "ground_truth": truth,
                                       "is_correct": correct}
