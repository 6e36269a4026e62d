"""The per-step metrics file: one JSON object per line in <job_dir>/metrics.jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def metrics_path(job_dir: str | Path) -> Path:
    """The metrics file of a job directory (or the file itself when given one)."""
    path = Path(job_dir)
    return path if path.suffix == ".jsonl" else path / METRICS_FILE


def append_record(job_dir: str | Path, record: dict[str, Any]) -> None:
    """Append one step's record as a JSON line."""
    # Opened per line, not held open: the loop rewrites the file on resume (dropping steps past the
    # checkpoint), and a held handle would keep appending to the replaced file.
    path = metrics_path(job_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=False, default=_json_default)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()


def read_metrics(job_dir: str | Path) -> list[dict[str, Any]]:
    """Read every step record back; a line cut short by a kill is skipped, a missing file reads as []."""
    path = metrics_path(job_dir)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def to_plain(value: Any) -> Any:
    """numpy / torch scalars (from user reward code) as plain Python numbers; anything else unchanged."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    plain = to_plain(value)
    if plain is value:
        raise TypeError(f"metrics record value of type {type(value).__name__} is not JSON serialisable")
    return plain


def as_float(value: Any) -> float | None:
    """A record value as a float, or None when it is not a number (bools count as numbers)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if hasattr(value, "item"):
        try:
            return float(value.item())
        except (TypeError, ValueError):
            return None
    return None


def finite(value: float | None) -> bool:
    """True for a real, finite number."""
    return value is not None and math.isfinite(value)
