"""The config layer's error type: every problem in a file, each naming its dotted path; and how a problem
shows the value it is about (`short`) and the name the user probably meant (`suggest`)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ConfigIssue:
    """One problem: where it is (dotted path, list items as `[i]`) and what to do about it."""

    path: str
    message: str
    # a problem Trinity checks itself when a veRL job starts (a name only a plugin may register, a missing
    # part): an error on Tinker, a warning with veRL
    soft: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(ValueError):
    """A job config that cannot be run; `issues` holds every problem found, not just the first."""

    def __init__(self, issues: list[ConfigIssue], source: str | None = None):
        self.issues = list(issues)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        """All issues as one human-readable block."""
        where = f" in {self.source}" if self.source else ""
        n = len(self.issues)
        head = f"{n} problem{'s' if n != 1 else ''}{where}:"
        return "\n".join([head, *(f"  {issue}" for issue in self.issues)])


def short(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions and swaps of two neighbours
    each cost 1 (a swap is the commonest typo: gpro for grpo)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[-1]


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """The valid name closest to a misspelt one, if any is close: fewest edits (a swap of two neighbours is
    one), then the most characters in common; None when nothing is near."""
    lowered = {c.lower(): c for c in choices}
    w = word.lower()
    scored = []
    for c in lowered:
        distance = edit_distance(w, c)
        ratio = difflib.SequenceMatcher(None, w, c).ratio()
        # near: a third of the letters edited at most (one edit for short words), or mostly the same letters
        if distance <= max(1, len(w) // 3) or ratio >= 0.6:
            scored.append((distance, -ratio, c))
    return lowered[min(scored)[2]] if scored else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """"did you mean 'x'? " for the closest valid name, or "" when none is close."""
    hint = suggest(word, choices)
    return f"did you mean '{hint}'? " if hint else ""
