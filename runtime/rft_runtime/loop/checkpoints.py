"""The job directory's bookkeeping of checkpoints: what a resumed run needs to continue exactly.

`checkpoint.json` holds, for the latest checkpoint: the stage, the step (within the stage and across the
job), the `tinker://` state path (weights and optimizer), the sampler weights path, and the taskset cursor
as of the batch that step trained on. It is written atomically (temp file + rename), so a run killed at
any moment leaves either the previous or the new bookkeeping, never half of one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FILE = "checkpoint.json"


@dataclass
class CheckpointEntry:
    """One saved state."""

    stage_index: int
    stage_step: int
    global_step: int
    state_path: str
    sampler_path: str | None
    stream_state: dict[str, Any] | None


@dataclass
class Bookkeeping:
    """What the job directory remembers between runs."""

    latest: CheckpointEntry | None = None
    history: list[CheckpointEntry] = field(default_factory=list)
    # stage index -> {"steps": n, "state_path": ..., "sampler_path": ...} for stages run to the end
    finished_stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, job_dir: Path) -> Bookkeeping:
        """Read the bookkeeping of a job directory (empty when there is none)."""
        path = Path(job_dir) / FILE
        if not path.exists():
            return cls()
        data = json.loads(path.read_text())
        latest = CheckpointEntry(**data["latest"]) if data.get("latest") else None
        history = [CheckpointEntry(**e) for e in data.get("history", [])]
        return cls(latest=latest, history=history, finished_stages=data.get("finished_stages", {}))

    def save(self, job_dir: Path) -> None:
        """Write atomically."""
        path = Path(job_dir) / FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        payload = {
            "latest": asdict(self.latest) if self.latest else None,
            "history": [asdict(e) for e in self.history],
            "finished_stages": self.finished_stages,
        }
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, path)

    def record(self, entry: CheckpointEntry, keep: int | None) -> list[CheckpointEntry]:
        """Make `entry` the latest; returns the entries dropped by max_checkpoints_to_keep."""
        self.latest = entry
        self.history.append(entry)
        dropped: list[CheckpointEntry] = []
        # 0 (Trinity's default) or None keeps them all
        if keep and len(self.history) > keep:
            dropped = self.history[:-keep]
            self.history = self.history[-keep:]
        return dropped
