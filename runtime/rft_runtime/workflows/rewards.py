"""Built-in reward functions. Each takes keyword arguments (response, truth, and its own options) and
returns a number or a dict of named parts whose sum is the reward (Trinity-RFT's convention)."""

from __future__ import annotations

import ast
import json
import operator
import re

from rft_runtime.workflows.answers import is_correct, numbers_equal, parse_number, well_formed
from rft_runtime.workflows.math_grading import equivalent, last_boxed, normalise


def accuracy_reward(response: str, truth: object) -> dict[str, float]:
    """{"accuracy": 1.0} when the answer (the <answer> block, else the whole response) equals the truth."""
    return {"accuracy": 1.0 if truth is not None and is_correct(response, truth) else 0.0}


def format_reward(response: str, format_score_coef: float = 0.1, pattern: str | None = None) -> dict[str, float]:
    """{"format_score": +coef} for exactly `<think>...</think> <answer>...</answer>`, else -coef; with
    `pattern` (Trinity's FormatReward argument) the response must match that regex (DOTALL, MULTILINE)."""
    ok = re.match(pattern, response, re.DOTALL | re.MULTILINE) is not None if pattern else well_formed(response)
    return {"format_score": format_score_coef if ok else -format_score_coef}


def math_reward(response: str, truth: object, format_score_coef: float = 0.1) -> dict[str, float]:
    """Reference math reward: accuracy (0 or 1) + format (+0.1 / -0.1); a right answer in shape is 1.1."""
    return {**accuracy_reward(response, truth), **format_reward(response, format_score_coef)}


def exact_match_reward(response: str, truth: object) -> dict[str, float]:
    """{"accuracy": 1.0} when the whole response, stripped, is the truth (also stripped)."""
    return {"accuracy": 1.0 if truth is not None and response.strip() == str(truth).strip() else 0.0}


def _strip_math(text: str) -> str:
    text = text.strip().strip("$").replace("\\!", "").replace("\\left", "").replace("\\right", "")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace(" ", "")
    text = text.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\%", "").replace("%", "")
    return text.rstrip(".")


def _boxed_equal(answer: str, truth: str) -> bool:
    a, t = _strip_math(answer), _strip_math(truth)
    if a == t:
        return True
    x, y = parse_number(a), parse_number(t)
    return x is not None and y is not None and a.count("\\") == 0 and numbers_equal(x, y)


def think_well_placed(response: str) -> bool:
    """Exactly one <think> and one </think>, in that order."""
    return response.count("<think>") == 1 and response.count("</think>") == 1 and \
        response.find("<think>") < response.find("</think>")


def math_boxed_reward(response: str, truth: object, with_think: bool = False,
                      format_score_coef: float = 0.1) -> dict[str, float]:
    """Trinity's math_boxed_reward: accuracy 1 when the last \\boxed{} of the response equals the truth's
    (the truth's own \\boxed{} content when it has one, else the whole truth); format_score
    -format_score_coef when with_think and the response lacks one well-placed <think></think>, else 0."""
    accuracy = 0.0
    given = last_boxed(response)
    if given is not None and truth is not None:
        want = last_boxed(str(truth))
        accuracy = 1.0 if _boxed_equal(given, want if want is not None else str(truth)) else 0.0
    fmt = -(format_score_coef or 0.1) if with_think and not think_well_placed(response) else 0.0
    return {"accuracy": accuracy, "format_score": fmt}


_EQUATION = re.compile(r"<answer>(.*?)</answer>")


def countdown_reward(response: str, truth: object) -> dict[str, float]:
    """Trinity's countdown_reward (TinyZero's rule): the truth is JSON {"target", "numbers"}; the last line's
    last <answer> holds an equation. score 1 when it uses every number exactly once and equals the target,
    0.1 when an equation is there but wrong or uses other numbers, 0 without one."""
    spec = json.loads(truth) if isinstance(truth, str) else truth
    if not isinstance(spec, dict) or "target" not in spec or "numbers" not in spec:
        raise ValueError(f"countdown_reward needs the truth as JSON {{\"target\": N, \"numbers\": [...]}}, got "
                         f"{truth!r:.100}")
    found = _EQUATION.findall(response.split("\n")[-1])
    if not found:
        return {"score": 0.0}
    equation = found[-1].strip()
    used = sorted(int(n) for n in re.findall(r"\d+", equation))
    if used != sorted(int(n) for n in spec["numbers"]):
        return {"score": 0.1}
    if not re.fullmatch(r"[\d+\-*/().\s]+", equation):
        return {"score": 0.1}
    try:
        value = _arith(equation)
    except (ValueError, ZeroDivisionError, SyntaxError, RecursionError):
        return {"score": 0.1}
    return {"score": 1.0 if abs(value - float(spec["target"])) < 1e-5 else 0.1}


def _arith(expr: str) -> float:
    """The value of + - * / ( ) arithmetic, evaluated on its syntax tree (never eval)."""
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        raise ValueError("not arithmetic")

    return walk(ast.parse(expr, mode="eval"))


def math_dapo_reward(response: str, truth: object, response_token: object = None,
                     enable_overlong_penalty: bool | None = None, penalty_factor: float | None = None,
                     max_response_length: int | None = None, cache_length: int | None = None) -> dict[str, float]:
    """Trinity's math_dapo_reward (DAPO's rule): accuracy +1 when the last \\boxed{} answer after the
    reasoning (`</think>`) equals the truth, else -1; with enable_overlong_penalty, format_score is DAPO's
    overlong shaping: 0 up to max_response_length - cache_length response tokens, falling linearly to
    -penalty_factor at max_response_length, and -penalty_factor beyond."""
    tail = str(response).split("</think>")[-1]
    boxed = last_boxed(tail)
    correct = boxed is not None and truth is not None and equivalent(normalise(boxed), str(truth))
    fmt = 0.0
    if enable_overlong_penalty:
        if max_response_length is None or cache_length is None or penalty_factor is None:
            raise ValueError("math_dapo_reward with enable_overlong_penalty needs reward_fn_args max_response_length, "
                             "cache_length and penalty_factor")
        if max_response_length <= cache_length:
            raise ValueError("math_dapo_reward: reward_fn_args.max_response_length must be greater than cache_length")
        length = len(response_token) if response_token is not None else 0  # type: ignore[arg-type]
        expected = max_response_length - cache_length
        if length > max_response_length:
            fmt = -float(penalty_factor)
        elif length >= expected:
            fmt = (expected - length) / cache_length * float(penalty_factor)
    return {"accuracy": 1.0 if correct else -1.0, "format_score": fmt}
