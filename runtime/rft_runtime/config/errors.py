"""The config layer's error type: every problem in a file, each naming its dotted path."""

from __future__ import annotations

from dataclasses import dataclass


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
