"""The algorithm layer's error type: each problem names its field, a dotted path taken from the config models."""

from __future__ import annotations

from rft_runtime.config.errors import ConfigIssue


class AlgorithmError(ValueError):
    """An algorithm or algorithm argument this runtime cannot use; `issues` name each field and what to do."""

    def __init__(self, message: str = "", path: object = "", *, issues: list[ConfigIssue] | None = None):
        self.issues = list(issues) if issues else [ConfigIssue(str(path), message)]
        # read as a sentence where it is printed whole: "algorithm.x must be > 0"
        super().__init__("; ".join(f"{i.path} {i.message}".strip() for i in self.issues))

    def at(self, path: object) -> AlgorithmError:
        """The same problems, those that name no field put at `path` (an advantage function's own check)."""
        return AlgorithmError(issues=[i if i.path else ConfigIssue(str(path), i.message) for i in self.issues])
