"""Where a job's workflow runners run: in this process, or as Ray actors (workflows.ray_runners).

Decided from the environment and the cluster section before any Ray process starts (`runners_on_ray`), and
reported by `rft validate` (`runners_where`); the Ray session, once open, is recorded here. Light: no
Ray, no workflow code.
"""

from __future__ import annotations

import os
from typing import Any

from rft_runtime.workflows.base import WorkflowError

MODE_VAR = "RFT_RAY"
_ON = {"1", "true", "on", "yes"}
_OFF = {"0", "false", "off", "no"}
# the Ray session this process holds for its job (workflows.ray_runners.RaySession), or None; kept here so that
# asking whether there is one costs no import of ray
_session: Any = None


class RunnerError(WorkflowError):
    """The workflow runners cannot run (Ray missing or unreachable, runners dead or stuck): the job cannot
    go on. The explorer raises it as the loop's RunError, which ends the job rather than retrying the batch."""


def cluster_named(cfg: Any) -> str | None:
    """What names a Ray cluster to join, or None: RAY_ADDRESS, cluster.ray_address (not 'auto'), or
    cluster.node_num > 1 (the operator's multi-node Tinker job)."""
    if os.environ.get("RAY_ADDRESS"):
        return f"RAY_ADDRESS={os.environ['RAY_ADDRESS']}"
    address = (cfg.cluster.ray_address or "auto").strip()
    if address != "auto":
        return f"cluster.ray_address: {address}"
    if cfg.cluster.node_num > 1:
        return f"cluster.node_num: {cfg.cluster.node_num}"
    return None


def runners_on_ray(cfg: Any) -> bool:
    """Whether the job's workflow runners are Ray actors.

    RFT_RAY=1 always, RFT_RAY=0 never (refused with a cluster to join: that would leave its nodes idle);
    unset (or 'auto'): when a cluster is named (see cluster_named), else in process. The switch is an
    environment variable, not a config key, because Trinity's loader refuses keys it does not know and the
    same file must stay valid for `trinity run`; the default is bench/explorer.py's verdict (docs/workflows.md).
    """
    raw = os.environ.get(MODE_VAR, "auto").strip().lower()
    named = cluster_named(cfg)
    if raw in _ON:
        return True
    if raw in _OFF:
        if named:
            raise RunnerError(f"{MODE_VAR}={raw} runs the workflows in this process, but {named} asks for a Ray "
                              f"cluster; unset {MODE_VAR} (or set it to 1) to run the runners on it")
        return False
    if raw not in ("", "auto"):
        raise RunnerError(f"{MODE_VAR}={raw!r}: use 1 (workflow runners on Ray), 0 (in this process) or auto")
    return named is not None


def runners_where(cfg: Any) -> str:
    """Where the job's workflow runners will run, for `rft validate`."""
    n = cfg.explorer.runner_per_model * cfg.explorer.rollout_model.engine_num
    try:
        on_ray = runners_on_ray(cfg)
    except RunnerError as exc:
        return f"refused: {exc}"
    if not on_ray:
        return f"{n}, in this process ({MODE_VAR}=1 or RAY_ADDRESS puts them on Ray)"
    named = cluster_named(cfg)
    return f"{n} Ray actors ({named or MODE_VAR + '=1'})"


def ray_session() -> Any:
    """The job's Ray session while one is open (its explorer's runners are then Ray actors), else None."""
    return _session


def set_ray_session(session: Any) -> None:
    """Record the job's Ray session (None when it closes)."""
    global _session
    _session = session
