"""Sampler weights and the trainer's state in the job directory, for jobs in other processes.

The files are Trinity's own (its Tinker trainer writes them and its synchronizer reads them), so that a
mode-explore job, a serve job or a bench job can follow the weights a trainer in another process makes:

    <job dir>/latest_state_dict_iteration.txt          the newest step with saved sampler weights
    <job dir>/global_step_<N>/remote_sampler_path.txt  the tinker:// path of step N's sampler weights

`trainer_status.json` is this runtime's: whether the trainer is training, waiting for experiences or has
stopped, so that an explorer in another process knows whether waiting for new weights can pay off (Trinity
learns this from its synchronizer actor).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

LATEST = "latest_state_dict_iteration.txt"
SAMPLER = "remote_sampler_path.txt"
STATUS = "trainer_status.json"

TRAINING, WAITING, STOPPED = "training", "waiting_for_experiences", "stopped"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a reader sees the old or the new file, never half of one


def publish(job_dir: Path, step: int, sampler_path: str) -> None:
    """Record step's sampler weights as the newest."""
    _write(job_dir / f"global_step_{step}" / SAMPLER, sampler_path)
    _write(job_dir / LATEST, str(step))


def latest(job_dir: Path) -> tuple[int, str | None]:
    """(step, tinker:// path) of the newest published sampler weights; (0, None) when there are none."""
    try:
        step = int((job_dir / LATEST).read_text().strip())
        return step, (job_dir / f"global_step_{step}" / SAMPLER).read_text().strip() or None
    except (OSError, ValueError):
        return 0, None


def set_status(job_dir: Path, status: str, step: int, seen: int | None = None) -> None:
    """Say what the trainer is doing (training, waiting for experiences, stopped); `seen`: how many
    experiences the buffer held when it last looked, so an explorer can tell whether it is really starved."""
    _write(job_dir / STATUS, json.dumps({"status": status, "step": step, "seen": seen, "time": time.time(),
                                         "who": f"{socket.gethostname()}:{os.getpid()}"}))


def status(job_dir: Path) -> dict[str, Any]:
    """The trainer's last word ({} when no trainer has run here)."""
    try:
        return json.loads((job_dir / STATUS).read_text())
    except (OSError, ValueError):
        return {}
