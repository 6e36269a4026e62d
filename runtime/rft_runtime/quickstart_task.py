"""The quickstart's synthetic task: single-digit addition with the answer in <answer> tags.

Small enough that a random tiny model learns it on two CPU cores in minutes, with an answer a program can
check. Questions are split by operand pair, so the held-out set asks sums the model never trained on.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM_PROMPT = "Add the numbers. Reply as <think>a+b</think> <answer>sum</answer>."


def question(a: int, b: int) -> str:
    """The user's message for one pair."""
    return f"{a}+{b}=?"


def response(a: int, b: int) -> str:
    """The well-formed target response (what the SFT warm-up shows)."""
    return f"<think>{a}+{b}</think> <answer>{a + b}</answer>"


def split_pairs(seed: int = 0, held_out: int = 20, max_digit: int = 9) -> tuple[list[tuple[int, int]], ...]:
    """All operand pairs, shuffled and split into (train, held-out test)."""
    pairs = [(a, b) for a in range(max_digit + 1) for b in range(max_digit + 1)]
    random.Random(seed).shuffle(pairs)
    return pairs[held_out:], pairs[:held_out]


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    """Write rows as JSON lines (the folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_task_files(data_dir: Path, seed: int = 0, repeats: int = 4) -> dict[str, Path]:
    """train.jsonl (RL tasks), sft.jsonl (demonstrations), test.jsonl (held-out pairs); GSM8K-style keys."""
    train, test = split_pairs(seed)
    rng = random.Random(seed + 1)
    rl_rows = [{"question": question(a, b), "answer": f"#### {a + b}"} for a, b in train]
    sft_rows = []
    for _ in range(repeats):
        for a, b in rng.sample(train, len(train)):
            sft_rows.append({"question": question(a, b), "answer": response(a, b)})
    test_rows = [{"question": question(a, b), "answer": f"#### {a + b}"} for a, b in test]
    return {
        "train": write_jsonl(data_dir / "train.jsonl", rl_rows),
        "sft": write_jsonl(data_dir / "sft.jsonl", sft_rows),
        "test": write_jsonl(data_dir / "test.jsonl", test_rows),
    }
