"""Stand-in for trinity.common.rewards.qwen25_eval: Qwen2.5-Math's answer grading."""

from rft_runtime.workflows.math_grading import equivalent as math_equal
from rft_runtime.workflows.math_grading import extract_answer, verify_math_answer
from rft_runtime.workflows.math_grading import normalise as strip_string

__all__ = ["extract_answer", "math_equal", "strip_string", "verify_math_answer"]
