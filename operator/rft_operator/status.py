"""Pure status logic: phase, reason and message -> conditions (kstatus-compatible) and transition events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

PENDING, RUNNING, SUCCEEDED, FAILED, SUSPENDED = "Pending", "Running", "Succeeded", "Failed", "Suspended"
PHASES = (PENDING, RUNNING, SUCCEEDED, FAILED, SUSPENDED)
TERMINAL = (SUCCEEDED, FAILED)

# Reasons a user sees in `kubectl describe` (status.reason, condition reasons, event reasons).
INVALID_CONFIG = "InvalidConfig"
INVALID_SPEC = "InvalidSpec"
WAITING_FOR_ADMISSION = "WaitingForAdmission"
# Pending, waiting for something that may still come (the Ready condition carries the reason and what)
WAITING_FOR_CONFIG_MAP = "WaitingForConfigMap"
WAITING_FOR_SECRET = "WaitingForSecret"
WAITING_FOR_RUNTIME = "WaitingForRuntime"
WAITING_FOR_RAY_CLUSTER = "WaitingForRayCluster"
RUNTIME_REFUSED = "RuntimeRefused"
# an earlier release failed jobs with this reason while their configFrom ConfigMap was missing (not final)
CONFIG_NOT_FOUND = "ConfigNotFound"
BACKOFF_LIMIT = "BackoffLimitExceeded"
DEADLINE = "DeadlineExceeded"
RETRYING = "Retrying"
CREATING = "CreatingPods"
PODS_PENDING = "PodsPending"
PODS_RUNNING = "PodsRunning"
COMPLETED = "Completed"
SUSPENDED_REASON = "Suspended"
SPEC_CHANGED = "SpecChanged"
WORKER_RESTARTED = "WorkerRestarted"
WORKER_RECREATED = "WorkerRecreated"
NO_PROGRESS = "NoProgress"
PROGRESSING = "Progressing"

CONDITION_TYPES = ("Ready", "Complete", "Failed", "Suspended", "Stalled")
WARNING_REASONS = {INVALID_CONFIG, INVALID_SPEC, CONFIG_NOT_FOUND, BACKOFF_LIMIT, DEADLINE, RETRYING, NO_PROGRESS,
                   RUNTIME_REFUSED, WAITING_FOR_CONFIG_MAP, WAITING_FOR_SECRET, WAITING_FOR_RUNTIME}
# The runtime's exit status for a job it refuses to start (bad config, an image without what the backend
# needs): the same pod would fail the same way again, so it is not retried.
REFUSED_EXIT_CODE = 2
KUEUE_GATE = "kueue.x-k8s.io/admission"
TERMINATION_MESSAGE_LIMIT = 600


def timestamp(now: float) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes times."""
    return datetime.fromtimestamp(now, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> float | None:
    """Seconds since the epoch from an RFC 3339 string (None stays None)."""
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def build_conditions(
    phase: str,
    reason: str,
    message: str,
    *,
    stalled: tuple[bool, str, str] | None,
    old: list[dict[str, Any]] | None,
    now: float,
    generation: int | None,
) -> list[dict[str, Any]]:
    """All conditions, keeping lastTransitionTime of those whose status did not change."""
    previous = {c.get("type"): c for c in (old or [])}
    wanted: dict[str, tuple[bool, str, str]] = {
        "Ready": (phase in (RUNNING, SUCCEEDED), reason, message),
        "Complete": (phase == SUCCEEDED, reason if phase == SUCCEEDED else "NotComplete",
                     message if phase == SUCCEEDED else ""),
        "Failed": (phase == FAILED, reason if phase == FAILED else "NotFailed", message if phase == FAILED else ""),
        "Suspended": (phase == SUSPENDED, reason if phase == SUSPENDED else "NotSuspended",
                      message if phase == SUSPENDED else ""),
        # kstatus (Flux) reads Stalled=True as "failed": a failed job is stalled for good, with its reason
        "Stalled": (True, reason, message) if phase == FAILED else stalled or (False, PROGRESSING, ""),
    }
    out = []
    for ctype in CONDITION_TYPES:
        value, why, text = wanted[ctype]
        status = "True" if value else "False"
        before = previous.get(ctype) or {}
        changed = before.get("status") != status
        cond = {
            "type": ctype,
            "status": status,
            "reason": why,
            "message": text,
            "lastTransitionTime": timestamp(now) if changed or not before.get("lastTransitionTime")
            else before["lastTransitionTime"],
        }
        if generation is not None:
            cond["observedGeneration"] = generation
        out.append(cond)
    return out


def transition_events(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type, reason, message) for each change a user should hear about: phase/reason, and stalls."""
    events = []
    before, after = old.get("phase"), new.get("phase")
    if (before, old.get("reason")) != (after, new.get("reason")):
        kind = "Warning" if after == FAILED or new.get("reason") in WARNING_REASONS else "Normal"
        if not before:
            text = str(after)  # the job's first status: no transition to name
        elif before != after:
            text = f"{before} -> {after}"
        else:  # the phase stays: name what changed within it
            text = f"{after}: {old.get('reason') or 'no reason'} -> {new.get('reason')}"
        if new.get("message"):
            text += f": {new['message']}"
        events.append((kind, new.get("reason") or after, text))
    was = _cond(old, "Stalled")
    now_ = _cond(new, "Stalled")
    stalled_now = now_ and now_.get("status") == "True" and new.get("phase") != FAILED
    if stalled_now and (not was or was.get("status") != "True"):
        events.append(("Warning", NO_PROGRESS, now_.get("message", "")))
    return events


def _cond(status: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for c in status.get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


def pod_phase(pod: dict[str, Any]) -> str:
    """The pod's phase ('Pending' when the kubelet has not said yet)."""
    return (pod.get("status") or {}).get("phase") or "Pending"


def pod_problem(pod: dict[str, Any]) -> str | None:
    """Why a pod is not running yet, from its container states (e.g. ImagePullBackOff) or scheduling."""
    status = pod.get("status") or {}
    gates = [g.get("name") for g in (pod.get("spec") or {}).get("schedulingGates") or []]
    if KUEUE_GATE in gates:
        queue = ((pod.get("metadata") or {}).get("labels") or {}).get("kueue.x-k8s.io/queue-name", "")
        return f"waiting for Kueue to admit the pod group (queue {queue})"
    if gates:
        return f"SchedulingGated: waiting for {', '.join(str(g) for g in gates)}"
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and waiting["reason"] not in ("ContainerCreating", "PodInitializing"):
            return f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"Unschedulable: {cond.get('message', '')}".rstrip(": ")
    return None


def pod_waits_for_secret(pod: dict[str, Any]) -> bool:
    """True while the kubelet cannot start a container for a Secret (or a key of one) that does not exist yet."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") == "CreateContainerConfigError" and "secret" in (waiting.get("message") or "").lower():
            return True
    return False


def pod_ready(pod: dict[str, Any]) -> bool:
    """Running, and not marked unready by the kubelet (a pod without conditions yet counts by its phase)."""
    if pod_phase(pod) != "Running" or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    ready = next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
    return ready is None or ready.get("status") == "True"


def pod_finished_at(pod: dict[str, Any], container: str) -> float | None:
    """When the container ended (its terminated state's finishedAt, else when the pod's Ready condition last
    changed), None when the kubelet said neither."""
    term = _terminated(pod, container) or _terminated(pod, None) or {}
    ready = next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), {})
    for text in (term.get("finishedAt"), ready.get("lastTransitionTime")):
        try:
            when = parse_time(text)
        except ValueError:
            continue
        if when is not None:
            return when
    return None


def pod_gated_by_kueue(pod: dict[str, Any]) -> bool:
    """True while Kueue holds the pod back (its admission scheduling gate is still on)."""
    return any(g.get("name") == KUEUE_GATE for g in (pod.get("spec") or {}).get("schedulingGates") or [])


def _terminated(pod: dict[str, Any], container: str | None) -> dict[str, Any] | None:
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        if container is not None and cs.get("name") != container:
            continue
        term = (cs.get("state") or {}).get("terminated") or {}
        if term:
            return term
    return None


def pod_failure(pod: dict[str, Any], container: str | None = None) -> str:
    """A short account of why a pod failed: exit code, reason and the end of its termination message.

    The runtime container's termination message is its log's last lines when it failed without writing one
    (terminationMessagePolicy FallbackToLogsOnError), e.g. the runtime naming the image it needs.
    """
    term = _terminated(pod, container) or _terminated(pod, None)
    if term:
        text = f"exit code {term.get('exitCode')} ({term.get('reason') or 'Error'})"
        lines = [line.strip() for line in (term.get("message") or "").splitlines() if line.strip()]
        if lines:
            tail = lines[-1]
            if len(tail) > TERMINATION_MESSAGE_LIMIT:
                tail = tail[: TERMINATION_MESSAGE_LIMIT - 3] + "..."
            text += f": {tail}"
        return text
    status = pod.get("status") or {}
    return status.get("reason") or status.get("message") or "failed"


def pod_refused(pod: dict[str, Any], container: str) -> bool:
    """True when the runtime container exited with the runtime's refusal code (retrying cannot help)."""
    term = _terminated(pod, container)
    return bool(term) and term.get("exitCode") == REFUSED_EXIT_CODE
