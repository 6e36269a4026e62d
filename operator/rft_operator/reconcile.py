"""The operator's decisions as one pure function: (RFTJob, observed children, now) -> a plan.

A plan lists the children to create, delete and patch, the complete new status and the events to post.
`apply_plan` carries it out. Every decision is derived from the RFTJob's status and the observed children,
never from memory, so an operator restart or a replayed watch event reaches the same plan again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rft_operator import status as st
from rft_operator.builders import (
    ATTEMPT_LABEL,
    CONTAINER,
    HASH_ANNOTATION,
    KUEUE_QUEUE,
    ROLE_LABEL,
    desired_children,
    multi_node_tinker,
    pod_name,
    spec_hash,
    spec_issues,
)
from rft_operator.jobconfig import ConfigResult
from rft_operator.podhash import legacy_digests
from rft_operator.spec import JobSpec

MESSAGE_LIMIT = 2000
KINDS = ("configmaps", "services", "persistentvolumeclaims", "pods")
# the wait before a failed worker's replacement: none the first time, then doubling up to the limit, so that a
# worker that fails at once (out of memory, a bad node) does not become a loop of pod creations
WORKER_BACKOFF_SECONDS = 10.0
WORKER_BACKOFF_LIMIT_SECONDS = 300.0


def worker_backoff(restarts: int) -> float:
    """Seconds between a worker's end and its replacement, after `restarts` replacements in this run."""
    if restarts <= 0:
        return 0.0
    return min(WORKER_BACKOFF_SECONDS * 2 ** min(restarts - 1, 16), WORKER_BACKOFF_LIMIT_SECONDS)


@dataclass
class Observed:
    """The children that exist now, by kind (selected by the job's label)."""

    pods: list[dict[str, Any]] = field(default_factory=list)
    configmaps: list[dict[str, Any]] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)
    persistentvolumeclaims: list[dict[str, Any]] = field(default_factory=list)

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The observed objects of one kind (plural name)."""
        return getattr(self, kind)


@dataclass
class Plan:
    """What to do: API writes, the whole new status, events, and when to look again."""

    create: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)
    patch: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    requeue_after: float | None = None

    def delete_pod(self, pod: dict[str, Any]) -> None:
        """Delete a pod unless it is already on its way out."""
        if not (pod.get("metadata") or {}).get("deletionTimestamp"):
            key = ("pods", pod["metadata"]["name"])
            if key not in self.delete:
                self.delete.append(key)

    def wake_in(self, seconds: float) -> None:
        """Ask to be reconciled again within `seconds` (deadlines, TTLs, stall checks)."""
        seconds = max(seconds, 1.0)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


def _name(obj: dict[str, Any]) -> str:
    return obj["metadata"]["name"]


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _deleting(obj: dict[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _ensure(plan: Plan, kind: str, desired: list[dict[str, Any]], observed: list[dict[str, Any]]) -> None:
    """Create what is missing; a ConfigMap whose data differs is patched (the only child patched in place)."""
    have = {_name(o): o for o in observed}
    for body in desired:
        current = have.get(_name(body))
        if current is None:
            plan.create.append((kind, body))
        elif kind == "configmaps" and current.get("data") != body.get("data"):
            plan.patch.append((kind, _name(body), {"data": body["data"]}))


def _pod_images(pods: list[dict[str, Any]]) -> set[str]:
    return {c["image"] for p in pods for c in (p.get("spec") or {}).get("containers") or [] if c.get("image")}


def _short(text: str) -> str:
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def _delete_unfinished(plan: Plan, current: dict[str, Any]) -> None:
    """Delete the pods of an ending job that have not finished; finished pods are left as they are."""
    for pod in current.values():
        if st.pod_phase(pod) not in ("Succeeded", "Failed"):
            plan.delete_pod(pod)


def plan_job(
    job: dict[str, Any],
    spec: JobSpec,
    config: ConfigResult,
    observed: Observed,
    *,
    now: float,
    stall_after: float | None = None,
    progress: dict[str, Any] | None = None,
    config_reason: str = st.INVALID_CONFIG,
) -> Plan:
    """Decide everything for one RFTJob; pure, so every lifecycle case is a unit test."""
    meta = job["metadata"]
    old: dict[str, Any] = dict(job.get("status") or {})
    plan = Plan()
    new: dict[str, Any] = {
        "retries": int(old.get("retries") or 0),
        "startTime": old.get("startTime"),
        "completionTime": old.get("completionTime"),
        "specHash": old.get("specHash"),
        "backend": old.get("backend"),
        "algorithm": old.get("algorithm"),
        "progress": progress if progress is not None else old.get("progress"),
        "cleanedUp": old.get("cleanedUp"),
        "workerRestarts": old.get("workerRestarts"),
    }
    phase, reason, message = st.PENDING, st.CREATING, ""
    stalled: tuple[bool, str, str] | None = None

    if not config.valid:
        # a config the runtime would refuse never gets pods; pods of an earlier, valid spec are stopped
        for pod in observed.pods:
            plan.delete_pod(pod)
        phase, reason = st.FAILED, config_reason
        message = _short("invalid spec.config: " + "; ".join(config.issues))
        return _finish(plan, job, old, new, phase, reason, message, stalled, now)

    new["backend"] = config.cfg.backend
    new["algorithm"] = config.cfg.algorithm.algorithm_type
    refused = spec_issues(job, spec, config)
    if refused:
        # a pod template that would break the runtime's pod, or GPUs nobody can request: nothing is created
        for pod in observed.pods:
            plan.delete_pod(pod)
        new["specHash"] = None  # refused before any pod: no spec of this job has run
        return _finish(plan, job, old, new, st.FAILED, st.INVALID_SPEC,
                       _short("invalid spec: " + "; ".join(refused)), stalled, now)
    digest = spec_hash(spec, config)
    # digests an older release stored for this very spec: its pods and its finished run stay as they are
    same = {digest} | legacy_digests(spec, config.text, _pod_images(observed.pods))
    old_phase, old_reason = old.get("phase"), old.get("reason")
    finished = old_phase in st.TERMINAL and old_reason not in (st.INVALID_CONFIG, st.CONFIG_NOT_FOUND,
                                                               st.INVALID_SPEC)

    if finished and old.get("specHash") in same:
        new["specHash"] = digest
        return _finished(plan, job, spec, observed, old, new, now)
    if old_phase == st.FAILED and old_reason == st.INVALID_SPEC and old.get("specHash") == digest:
        # the API server refused this spec's pods (Controller.refuse_pod): only a new spec tries again
        return _finished(plan, job, spec, observed, old, new, now)
    if finished:
        # a new spec after the end is a new run (what a GitOps user who fixes a job expects)
        new.update(retries=0, startTime=None, completionTime=None, cleanedUp=None, progress=None,
                   workerRestarts=None)
        plan.events.append(("Normal", st.SPEC_CHANGED, "spec changed after the job ended: starting a new run"))
    new["specHash"] = digest
    retries = new["retries"]

    children = desired_children(job, spec, config, attempt=retries, with_pods=True)
    for kind in ("persistentvolumeclaims", "configmaps", "services"):
        _ensure(plan, kind, children[kind], observed.of(kind))

    # pods of an earlier attempt or an earlier spec go; their replacements wait until they are gone
    current: dict[str, dict[str, Any]] = {}
    restarted = False
    for pod in observed.pods:
        labels = _labels(pod)
        if labels.get(ATTEMPT_LABEL) != str(retries) or labels.get(HASH_ANNOTATION) not in same:
            restarted |= labels.get(ATTEMPT_LABEL) == str(retries) and not _deleting(pod)
            plan.delete_pod(pod)
        elif not _deleting(pod):
            current[_name(pod)] = pod
    if restarted and not finished:
        plan.events.append(("Normal", st.SPEC_CHANGED, "spec changed: restarting the pods with the new config"))

    if spec.suspend:
        for pod in current.values():
            plan.delete_pod(pod)
        # like a Job, the active deadline counts from the last resume
        new["startTime"] = None
        return _finish(plan, job, old, new, st.SUSPENDED, st.SUSPENDED_REASON,
                       "suspended: pods removed, storage kept", stalled, now)

    head = current.get(pod_name(meta["name"], "head"))
    workers = [_name(p) for p in children["pods"] if _labels(p).get(ROLE_LABEL) == "worker"]
    # a multi-node Tinker job's workers only run Ray: one that ends is replaced alone while the head keeps
    # training (the runtime re-runs what its runners had in flight). A veRL job's pods hold its GPU placement
    # together, so any failure retries the whole job as before. So does a queued one: Kueue lets a failed pod
    # of a group go only once a replacement with another name exists, and a worker's name is reused.
    spare = multi_node_tinker(config) and not _labels(job).get(KUEUE_QUEUE)
    ended = [current[n] for n in workers if spare and n in current
             and st.pod_phase(current[n]) in ("Failed", "Succeeded") and not st.pod_refused(current[n], CONTAINER)]
    ended_names = {_name(p) for p in ended}
    failed = [p for p in current.values() if st.pod_phase(p) == "Failed" and _name(p) not in ended_names]
    start = st.parse_time(new["startTime"])
    deadline = spec.active_deadline_seconds
    queued = any(st.pod_gated_by_kueue(p) for p in current.values())
    # not started while Kueue holds the pods (as a Job it keeps suspended): the deadline starts at admission.
    # A queued job's pods are gated from their creation on, so the clock does not start when they are created.
    unstarted = queued or (bool(_labels(job).get(KUEUE_QUEUE)) and not current)
    if queued:
        new["startTime"], start = None, None

    if head is not None and st.pod_phase(head) == "Succeeded":
        phase, reason, message = st.SUCCEEDED, st.COMPLETED, "the runtime finished"
        _delete_unfinished(plan, current)
        new["completionTime"] = new["completionTime"] or st.timestamp(now)
    elif failed:
        bad = next((p for p in failed if st.pod_refused(p, CONTAINER)), failed[0])
        why = f"pod {_name(bad)} failed: {st.pod_failure(bad, CONTAINER)}"
        if st.pod_refused(bad, CONTAINER):
            # the runtime refused to start (exit 2): the same pod would fail the same way, so no retry
            phase, reason = st.FAILED, st.RUNTIME_REFUSED
            message = f"{why}; not retried (the runtime refuses this spec or image)"
            _delete_unfinished(plan, current)
            new["completionTime"] = st.timestamp(now)
        elif retries < spec.backoff_limit:
            new["retries"] = retries + 1
            phase, reason = st.PENDING, st.RETRYING
            message = f"{why}; retry {retries + 1} of {spec.backoff_limit} (the runtime resumes from its checkpoint)"
            for pod in current.values():
                plan.delete_pod(pod)
        else:
            phase, reason = st.FAILED, st.BACKOFF_LIMIT
            message = f"{why}; backoffLimit {spec.backoff_limit} reached"
            _delete_unfinished(plan, current)
            new["completionTime"] = st.timestamp(now)
    elif deadline is not None and start is not None and now - start >= deadline:
        phase, reason = st.FAILED, st.DEADLINE
        message = f"activeDeadlineSeconds {deadline} passed"
        _delete_unfinished(plan, current)
        new["completionTime"] = st.timestamp(now)
    else:
        present = {_name(p) for p in observed.pods}
        missing = [p for p in children["pods"] if _name(p) not in present]
        head_running = head is not None and st.pod_phase(head) == "Running"
        for pod in missing:
            plan.create.append(("pods", pod))
            if spare and head_running and _name(pod) in workers:
                plan.events.append(("Normal", st.WORKER_RECREATED,
                                    f"worker pod {_name(pod)} was gone: created it again; the head keeps running"))
        waiting = _replace_workers(plan, new, ended, now) if spare else []
        if new["startTime"] is None and not unstarted:
            new["startTime"] = st.timestamp(now)
            start = now
        wanted = [_name(p) for p in children["pods"]]
        ready = sum(1 for n in workers if n in current and st.pod_ready(current[n]))
        if workers:
            # one field for the printer column, one to compute with
            new["workers"], new["readyWorkers"] = f"{ready}/{len(workers)}", ready
        everything = all(n in current and st.pod_phase(current[n]) == "Running" for n in wanted)
        if everything or (spare and head_running):
            phase, reason, message = st.RUNNING, st.PODS_RUNNING, f"{len(wanted)} pod(s) running"
            if not everything:
                problems = [f"{n}: {st.pod_problem(current[n])}" for n in workers
                            if n in current and st.pod_problem(current[n])]
                message = "; ".join([f"the head is running, {ready} of {len(workers)} workers ready",
                                     *waiting, *problems])
            if spec.metrics_enabled:  # without the endpoint there is no progress to miss
                stalled = _stall(plan, new, start, now, spec.progress_deadline_seconds or stall_after)
        else:
            problems = waiting + [f"{n}: {st.pod_problem(current[n])}" for n in wanted
                                  if n in current and st.pod_problem(current[n])]
            phase = st.PENDING
            reason = st.CREATING if missing or len(current) < len(wanted) else st.PODS_PENDING
            if queued:
                reason = st.WAITING_FOR_ADMISSION
            message = "; ".join(problems) or f"waiting for {len(wanted)} pod(s) to run"
            if old_reason == st.RETRYING and missing:
                reason, message = st.RETRYING, old.get("message") or message
        if deadline is not None and start is not None:
            plan.wake_in(start + deadline - now)
    return _finish(plan, job, old, new, phase, reason, _short(message), stalled, now)


def _replace_workers(plan: Plan, new: dict[str, Any], ended: list[dict[str, Any]], now: float) -> list[str]:
    """Delete the workers that ended (to be created again once gone), each after its backoff; counted in
    status.workerRestarts. Returns what waits for its backoff, for the status message."""
    restarts = int(new.get("workerRestarts") or 0)
    waiting = []
    for pod in ended:
        how = "failed" if st.pod_phase(pod) == "Failed" else "ended"
        why = f"worker pod {_name(pod)} {how}: {st.pod_failure(pod, CONTAINER)}"
        ended_at = st.pod_finished_at(pod, CONTAINER)
        due = None if ended_at is None else ended_at + worker_backoff(restarts)
        if due is not None and now < due:
            plan.wake_in(due - now)
            # a time, not a countdown: the message (and so the status) stays the same until then
            waiting.append(f"{why}; replacing it at {st.timestamp(due)} (backoff after {restarts} restarts)")
            continue
        # counted in the same status write that precedes the delete (at most once more if the operator stops
        # between the two: the pod is then seen failed again)
        restarts += 1
        plan.delete_pod(pod)
        plan.events.append(("Warning", st.WORKER_RESTARTED,
                            f"{why}; replacing it (worker restart {restarts}), the head keeps running"))
    if restarts:
        new["workerRestarts"] = restarts
    return waiting


def compute_status(job: dict[str, Any], spec: JobSpec, config: ConfigResult, observed: Observed, *, now: float,
                   **kwargs: Any) -> dict[str, Any]:
    """(RFTJob, its pods and children, now) -> the status it should have: the status half of `plan_job`."""
    return plan_job(job, spec, config, observed, now=now, **kwargs).status


def _stall(plan: Plan, new: dict[str, Any], start: float | None, now: float,
           after: float | None) -> tuple[bool, str, str] | None:
    """Stalled when neither a step nor the start happened within `after` seconds."""
    if not after:
        return None
    progress = new.get("progress") or {}
    last = st.parse_time(progress.get("lastUpdateTime")) or start
    if last is None:
        return None
    idle = now - last
    if idle >= after:
        step = progress.get("step")
        where = f" (last step {step})" if step is not None else " (no step reported yet)"
        return True, st.NO_PROGRESS, f"no training progress for {int(idle)}s{where}"
    plan.wake_in(last + after - now)
    return False, st.PROGRESSING, ""


def _finished(plan: Plan, job: dict[str, Any], spec: JobSpec, observed: Observed, old: dict[str, Any],
              new: dict[str, Any], now: float) -> Plan:
    """A job that ended stays ended; finished pods stay for their logs until ttlSecondsAfterFinished."""
    for pod in observed.pods:
        if st.pod_phase(pod) not in ("Succeeded", "Failed"):
            plan.delete_pod(pod)
    ttl = spec.ttl_seconds_after_finished
    done = st.parse_time(old.get("completionTime"))
    if ttl is not None and done is not None:
        if now >= done + ttl:
            # children go, the RFTJob stays: GitOps tools would re-create a deleted one
            for pod in observed.pods:
                plan.delete_pod(pod)
            for kind in ("configmaps", "services"):
                for obj in observed.of(kind):
                    plan.delete.append((kind, _name(obj)))
            if not old.get("cleanedUp"):
                new["cleanedUp"] = True
                plan.events.append(("Normal", "CleanedUp", f"ttlSecondsAfterFinished {ttl} passed: pods removed"))
        else:
            plan.wake_in(done + ttl - now)
    return _finish(plan, job, old, new, old["phase"], old.get("reason") or old["phase"],
                   old.get("message") or "", None, now)


def _finish(plan: Plan, job: dict[str, Any], old: dict[str, Any], new: dict[str, Any], phase: str, reason: str,
            message: str, stalled: tuple[bool, str, str] | None, now: float) -> Plan:
    generation = (job.get("metadata") or {}).get("generation")
    new.update(phase=phase, reason=reason, message=message)
    progress = new.get("progress") or {}
    if progress.get("step") is not None:
        # a printer column can show one field only, so step and total are joined here
        total = progress.get("totalSteps")
        new["steps"] = f"{progress['step']}/{total}" if total else str(progress["step"])
    if generation is not None:
        new["observedGeneration"] = generation
    new["conditions"] = st.build_conditions(phase, reason, message, stalled=stalled,
                                            old=old.get("conditions"), now=now, generation=generation)
    plan.status = {k: v for k, v in new.items() if v is not None}
    plan.events = plan.events + st.transition_events(old, plan.status)
    return plan


def status_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON merge patch turning `old` status into `new` (None when nothing changed).

    Keys that disappear, at any depth, become null: a merge patch would otherwise keep them (e.g. a reward
    the runtime stopped reporting would stay in status.progress next to a newer step).
    """
    return _merge_diff(old, new) or None


def _merge_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if before == value:
            continue
        if isinstance(value, dict) and isinstance(before, dict):
            patch[key] = _merge_diff(before, value)
        else:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch
