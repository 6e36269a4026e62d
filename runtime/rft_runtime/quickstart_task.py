"""The quickstart's synthetic tasks: a question about two digits, answered in <answer> tags.

`larger-digit` (the tiny random model): chosen by measurement on the tiny preset (two CPU cores, LoRA):
single-digit addition did not generalise to held-out pairs within minutes (5% after 240 SFT steps), while
picking the larger digit did (65% after 160), because it needs only an ordering of ten digit embeddings,
not a table of sums.

`digit-sum` (SmolLM2-135M-Instruct): the sum of two digits, asked in words. The instruct model knows most
of these sums but never answers in the checkable <answer>N</answer> shape and often buries the number in
a sentence (measured greedy on 30 pairs: 0/30 in the shape, 11/30 with the right number last), so held-out
accuracy starts at 0 and what it learns (the shape, and to give the sum and stop) carries to pairs it
never trained on.

Questions are split by pair, so the held-out set asks pairs the model never trained on.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM_PROMPT = "Answer in <answer></answer>."
TASKS = ("larger-digit", "digit-sum")


def question(a: int, b: int, task: str = "larger-digit") -> str:
    """The user's message for one pair."""
    return f"What is {a} + {b}?" if task == "digit-sum" else f"max({a},{b})=?"


def answer(a: int, b: int, task: str = "larger-digit") -> int:
    """The checkable answer."""
    return a + b if task == "digit-sum" else max(a, b)


def response(a: int, b: int, task: str = "larger-digit") -> str:
    """The well-formed target response (what the SFT warm-up shows)."""
    return f"<answer>{answer(a, b, task)}</answer>"


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


def write_task_files(data_dir: Path, seed: int = 0, repeats: int = 4, task: str = "larger-digit",
                     held_out: int = 20) -> dict[str, Path]:
    """train.jsonl (RL tasks), sft.jsonl (demonstrations), test.jsonl (held-out pairs)."""
    if task not in TASKS:
        raise ValueError(f"unknown quickstart task {task!r}: use one of {TASKS}")
    train, test = split_pairs(seed, held_out=held_out)
    rng = random.Random(seed + 1)
    rl_rows = [{"question": question(a, b, task), "answer": str(answer(a, b, task))} for a, b in train]
    sft_rows = []
    for _ in range(repeats):
        for a, b in rng.sample(train, len(train)):
            sft_rows.append({"question": question(a, b, task), "answer": response(a, b, task)})
    test_rows = [{"question": question(a, b, task), "answer": str(answer(a, b, task))} for a, b in test]
    return {
        "train": write_jsonl(data_dir / "train.jsonl", rl_rows),
        "sft": write_jsonl(data_dir / "sft.jsonl", sft_rows),
        "test": write_jsonl(data_dir / "test.jsonl", test_rows),
    }
