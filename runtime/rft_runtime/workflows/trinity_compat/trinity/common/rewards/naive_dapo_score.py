"""Stand-in for trinity.common.rewards.naive_dapo_score: DAPO's answer check."""

from rft_runtime.workflows.math_grading import equivalent, last_boxed, normalise


def compute_score(solution_str: str, ground_truth: str) -> tuple[float, str]:
    """(1.0 or 0.0, the extracted answer): the last \\boxed{} after the reasoning against the truth."""
    tail = str(solution_str).split("</think>")[-1]
    boxed = last_boxed(tail)
    answer = normalise(boxed) if boxed is not None else tail[:20]
    return (1.0 if boxed is not None and equivalent(answer, str(ground_truth)) else 0.0), answer
