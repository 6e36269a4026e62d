"""The operator's decisions as pure steps: (RFTJob, observed children, now) -> a plan.

A plan lists the children to create, delete and patch, the complete new status and the events to post;
`Controller.apply` carries it out. Every decision is derived from the RFTJob's status and the observed
children, never from memory, so an operator restart or a replayed watch event reaches the same plan again.

`plan_job` runs the steps in order; each looks at one question and either ends the pass with a plan or
leaves the pass (`Pass`) for the next:

1. `held`: an input is missing (the configFrom ConfigMap, the named runtime): Pending until it comes, the
   job's pods, if any, left as they are;
2. `refused`: the config or the spec cannot make working pods: Failed, for good until the input changes;
3. `finished_or_new_run`: a job that ended stays ended (its pods go at ttlSecondsAfterFinished); a changed
   input after the end is a new run;
4. `children`: the ConfigMap, Service and claim;
5. `stale_pods`: pods of an earlier attempt or spec go;
6. `suspended`: spec.suspend removes the pods;
7. `waiting`: what the pods need before they can be created (the RayCluster to join) is not ready: Pending;
8. `pod_outcome`: the pods say Succeeded, Failed (retried up to backoffLimit), Running or Pending.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rft_operator import status as st
from rft_operator.builders import (
    ATTEMPT_LABEL,
    CONTAINER,
    HASH_ANNOTATION,
    ROLE_LABEL,
    desired_children,
    kueue_queue,
    multi_node_tinker,
    pod_name,
    spec_hash,
    spec_issues,
)
from rft_operator.cache import data_digest
from rft_operator.jobconfig import ConfigResult
from rft_operator.podhash import legacy_digests
from rft_operator.spec import JobSpec

MESSAGE_LIMIT = 2000
KINDS = ("configmaps", "services", "persistentvolumeclaims", "pods")
# the wait before a failed worker's replacement: none the first time, then doubling up to the limit, so that a
# worker that fails at once (out of memory, a bad node) does not become a loop of pod creations
WORKER_BACKOFF_SECONDS = 10.0
WORKER_BACKOFF_LIMIT_SECONDS = 300.0
# reasons of a Failed job an earlier release wrote and did not mean as final (it turned back by itself)
LEGACY_NOT_FINAL = frozenset({st.CONFIG_NOT_FOUND})


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


@dataclass(frozen=True)
class Waiting:
    """Something the job waits for that may still come: why (a status reason) and what (the message)."""

    reason: str
    message: str


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


@dataclass
class Pass:
    """One reconcile of one job: its inputs, and what the steps have decided so far."""

    job: dict[str, Any]
    spec: JobSpec
    config: ConfigResult | None
    observed: Observed
    now: float
    stall_after: float | None
    progress: dict[str, Any] | None
    held: Waiting | None
    waiting: Waiting | None
    old: dict[str, Any]
    new: dict[str, Any]
    plan: Plan = field(default_factory=Plan)
    digest: str = ""
    same: set[str] = field(default_factory=set)
    children: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    current: dict[str, dict[str, Any]] = field(default_factory=dict)
    finished: bool = False


def _name(obj: dict[str, Any]) -> str:
    return obj["metadata"]["name"]


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _deleting(obj: dict[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _short(text: str) -> str:
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def _pod_images(pods: list[dict[str, Any]]) -> set[str]:
    return {c["image"] for p in pods for c in (p.get("spec") or {}).get("containers") or [] if c.get("image")}


def _runtime_image(pods: list[dict[str, Any]]) -> str | None:
    for pod in pods:
        for c in (pod.get("spec") or {}).get("containers") or []:
            if c.get("name") == CONTAINER and c.get("image"):
                return c["image"]
    return None


def _delete_unfinished(plan: Plan, current: dict[str, Any]) -> None:
    """Delete the pods of an ending job that have not finished; finished pods are left as they are."""
    for pod in current.values():
        if st.pod_phase(pod) not in ("Succeeded", "Failed"):
            plan.delete_pod(pod)


def _ended(old: dict[str, Any]) -> bool:
    return old.get("phase") in st.TERMINAL and old.get("reason") not in LEGACY_NOT_FINAL


def begin(job: dict[str, Any], spec: JobSpec, config: ConfigResult | None, observed: Observed, *, now: float,
          stall_after: float | None = None, progress: dict[str, Any] | None = None,
          held: Waiting | None = None, waiting: Waiting | None = None) -> Pass:
    """The pass's starting point: the old status, and the new one carrying over what stays."""
    old: dict[str, Any] = dict(job.get("status") or {})
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
        "runtime": spec.runtime,
    }
    p = Pass(job=job, spec=spec, config=config, observed=observed, now=now, stall_after=stall_after,
             progress=progress, held=held, waiting=waiting, old=old, new=new)
    if config is not None:
        p.digest = spec_hash(spec, config)
        # digests an older release stored for this very spec: its pods and its finished run stay as they are
        p.same = {p.digest} | legacy_digests(spec, config.text, _pod_images(observed.pods))
    return p


def held(p: Pass) -> Plan | None:
    """An input is missing (configFrom's ConfigMap, the runtime the job names): nothing new is made without it.

    A job that ended stays as it is. Pods that run keep running with what they were made with, and the status
    stays; a head that succeeded still ends the job. Without pods, or once one failed (the next attempt
    needs the input), the job is Pending and says what it waits for. Nothing turns Failed: the input may
    still come (a GitOps tool may apply the ConfigMap after the job).
    """
    if p.held is None:
        return None
    if _ended(p.old):
        return _finished(p)
    live = {_name(pod): pod for pod in p.observed.pods if not _deleting(pod)}
    head = live.get(pod_name(p.job["metadata"]["name"], "head"))
    if head is not None and st.pod_phase(head) == "Succeeded":
        _delete_unfinished(p.plan, live)
        p.new["completionTime"] = p.new["completionTime"] or st.timestamp(p.now)
        return _finish(p, st.SUCCEEDED, st.COMPLETED, "the runtime finished")
    failed = [pod for pod in live.values() if st.pod_phase(pod) == "Failed"]
    if live and not failed:
        p.plan.status = {k: v for k, v in p.old.items()}
        return p.plan
    message = p.held.message
    if failed:
        message = (f"pod {_name(failed[0])} failed: {st.pod_failure(failed[0], CONTAINER)}; the next attempt is "
                   f"{message}")
    return _finish(p, st.PENDING, p.held.reason, message)


def refused(p: Pass) -> Plan | None:
    """A config the runtime would refuse, or a spec that cannot make working pods: Failed, and final until
    the input changes (a new spec, or new content in the configFrom ConfigMap). Nothing is created; pods of
    an earlier, valid spec are stopped."""
    config = p.config
    assert config is not None
    if config.valid:
        new_issues = spec_issues(p.job, p.spec, config)
        if not new_issues:
            return None
        reason, message = st.INVALID_SPEC, "invalid spec: " + "; ".join(new_issues)
    else:
        reason, message = st.INVALID_CONFIG, "invalid spec.config: " + "; ".join(config.issues)
    if _ended(p.old) and p.old.get("specHash") in p.same:
        return None  # refused (or ended) before with this very input: `finished_or_new_run` keeps it
    for pod in p.observed.pods:
        p.plan.delete_pod(pod)
    if config.valid:
        p.new["backend"], p.new["algorithm"] = config.facts.backend, config.facts.algorithm
    p.new["specHash"] = p.digest
    p.new["completionTime"] = st.timestamp(p.now)
    message = _short(message)
    if p.old.get("phase") == st.FAILED and p.old.get("reason") == reason and p.old.get("message") != message:
        # the same phase and reason, so no transition event: the new input's problems still deserve one
        p.plan.events.append(("Warning", reason, f"spec changed, still invalid: {message}"))
    return _finish(p, st.FAILED, reason, message)


def finished_or_new_run(p: Pass) -> Plan | None:
    """A job that ended with this input stays ended; a new input after the end starts a new run (what a
    GitOps user who fixes a job expects)."""
    if not _ended(p.old):
        return None
    if p.old.get("specHash") in p.same:
        p.new["specHash"] = p.digest
        return _finished(p)
    p.new.update(retries=0, startTime=None, completionTime=None, cleanedUp=None, progress=None,
                 workerRestarts=None)
    p.plan.events.append(("Normal", st.SPEC_CHANGED, "spec changed after the job ended: starting a new run"))
    return None


def waiting(p: Pass) -> Plan | None:
    """What the pods need before they are created is not ready (the RayCluster the job joins): Pending, no
    pod created. Pods of this run that exist already keep running."""
    if p.waiting is None or p.current:
        return None
    return _finish(p, st.PENDING, p.waiting.reason, p.waiting.message)


def children(p: Pass) -> None:
    """The ConfigMap, Service and claim the job should have: what is missing is created, a ConfigMap whose
    data differs is patched (the only child patched in place)."""
    assert p.config is not None
    p.new["backend"], p.new["algorithm"] = p.config.facts.backend, p.config.facts.algorithm
    p.new["specHash"] = p.digest
    p.children = desired_children(p.job, p.spec, p.config, attempt=p.new["retries"], with_pods=True)
    for kind in ("persistentvolumeclaims", "configmaps", "services"):
        have = {_name(o): o for o in p.observed.of(kind)}
        for body in p.children[kind]:
            current = have.get(_name(body))
            if current is None:
                p.plan.create.append((kind, body))
            elif kind == "configmaps" and data_digest(current) != data_digest(body):
                p.plan.patch.append((kind, _name(body), {"data": body["data"]}))


def _changed_what(p: Pass, stale: list[dict[str, Any]]) -> str:
    """What a spec change changed for the pods, as the event says it."""
    before = _runtime_image(stale)
    after = next((c["image"] for pod in p.children["pods"] for c in pod["spec"]["containers"]
                  if c.get("name") == CONTAINER), None)
    desired = {_name(b): data_digest(b) for b in p.children["configmaps"]}
    config_changed = any(desired.get(_name(o)) not in (None, data_digest(o)) for o in p.observed.configmaps)
    image_changed = before is not None and after is not None and before != after
    if image_changed and not config_changed:
        return f"spec.image changed from {before} to {after}: restarting the pods with the new image"
    if config_changed and not image_changed:
        return "the config changed: restarting the pods with the new config"
    if image_changed:
        return f"the config and the image ({before} -> {after}) changed: restarting the pods with both"
    return "spec changed: restarting the pods with the new pod spec"


def stale_pods(p: Pass) -> None:
    """Pods of an earlier attempt or an earlier spec go; their replacements wait until they are gone."""
    retries = p.new["retries"]
    restarted = []
    for pod in p.observed.pods:
        labels = _labels(pod)
        if labels.get(ATTEMPT_LABEL) != str(retries) or labels.get(HASH_ANNOTATION) not in p.same:
            if labels.get(ATTEMPT_LABEL) == str(retries) and not _deleting(pod):
                restarted.append(pod)
            p.plan.delete_pod(pod)
        elif not _deleting(pod):
            p.current[_name(pod)] = pod
    if restarted and not _ended(p.old):
        p.plan.events.append(("Normal", st.SPEC_CHANGED, _changed_what(p, restarted)))


def suspended(p: Pass) -> Plan | None:
    """spec.suspend: the pods go, storage stays; like a Job, the active deadline counts from the resume."""
    if not p.spec.suspend:
        return None
    for pod in p.current.values():
        p.plan.delete_pod(pod)
    p.new["startTime"] = None
    return _finish(p, st.SUSPENDED, st.SUSPENDED_REASON, "suspended: pods removed, storage kept")


def pod_outcome(p: Pass) -> Plan:
    """What the pods say: the head succeeded, a pod failed (retried up to backoffLimit, a lone Tinker worker
    replaced), the deadline passed, or the pods run or wait."""
    spec, current, plan, new, now = p.spec, p.current, p.plan, p.new, p.now
    assert p.config is not None
    meta = p.job["metadata"]
    retries = new["retries"]
    head = current.get(pod_name(meta["name"], "head"))
    workers = [_name(w) for w in p.children["pods"] if _labels(w).get(ROLE_LABEL) == "worker"]
    # a multi-node Tinker job's workers only run Ray: one that ends is replaced alone while the head keeps
    # training (the runtime re-runs what its runners had in flight). A veRL job's pods hold its GPU placement
    # together, so any failure retries the whole job as before. So does a queued one: Kueue lets a failed pod
    # of a group go only once a replacement with another name exists, and a worker's name is reused.
    queue, _ = kueue_queue(p.job, spec)
    spare = multi_node_tinker(p.config, spec) and not queue
    ended = [current[n] for n in workers if spare and n in current
             and st.pod_phase(current[n]) in ("Failed", "Succeeded") and not st.pod_refused(current[n], CONTAINER)]
    ended_names = {_name(e) for e in ended}
    failed = [f for f in current.values() if st.pod_phase(f) == "Failed" and _name(f) not in ended_names]
    start = st.parse_time(new["startTime"])
    deadline = spec.active_deadline_seconds
    queued = any(st.pod_gated_by_kueue(q) for q in current.values())
    # not started while Kueue holds the pods (as a Job it keeps suspended): the deadline starts at admission.
    # A queued job's pods are gated from their creation on, so the clock does not start when they are created.
    unstarted = queued or (bool(queue) and not current)
    if queued:
        new["startTime"], start = None, None
    stalled = None

    if head is not None and st.pod_phase(head) == "Succeeded":
        _delete_unfinished(plan, current)
        new["completionTime"] = new["completionTime"] or st.timestamp(now)
        return _finish(p, st.SUCCEEDED, st.COMPLETED, "the runtime finished")
    if failed:
        bad = next((f for f in failed if st.pod_refused(f, CONTAINER)), failed[0])
        why = f"pod {_name(bad)} failed: {st.pod_failure(bad, CONTAINER)}"
        if st.pod_refused(bad, CONTAINER):
            # the runtime refused to start (exit 2): the same pod would fail the same way, so no retry
            _delete_unfinished(plan, current)
            new["completionTime"] = st.timestamp(now)
            return _finish(p, st.FAILED, st.RUNTIME_REFUSED,
                           f"{why}; not retried (the runtime refuses this spec or image)")
        if retries < spec.backoff_limit:
            new["retries"] = retries + 1
            for pod in current.values():
                plan.delete_pod(pod)
            return _finish(p, st.PENDING, st.RETRYING, f"{why}; retry {retries + 1} of {spec.backoff_limit} "
                           "(the runtime resumes from its checkpoint)")
        _delete_unfinished(plan, current)
        new["completionTime"] = st.timestamp(now)
        return _finish(p, st.FAILED, st.BACKOFF_LIMIT, f"{why}; backoffLimit {spec.backoff_limit} reached")
    if deadline is not None and start is not None and now - start >= deadline:
        _delete_unfinished(plan, current)
        new["completionTime"] = st.timestamp(now)
        return _finish(p, st.FAILED, st.DEADLINE, f"activeDeadlineSeconds {deadline} passed")

    present = {_name(o) for o in p.observed.pods}
    missing = [m for m in p.children["pods"] if _name(m) not in present]
    head_running = head is not None and st.pod_phase(head) == "Running"
    for pod in missing:
        plan.create.append(("pods", pod))
        if spare and head_running and _name(pod) in workers:
            plan.events.append(("Normal", st.WORKER_RECREATED,
                                f"worker pod {_name(pod)} was gone: created it again; the head keeps running"))
    waits = _replace_workers(plan, new, ended, now) if spare else []
    if new["startTime"] is None and not unstarted:
        new["startTime"] = st.timestamp(now)
        start = now
    wanted = [_name(w) for w in p.children["pods"]]
    ready = sum(1 for n in workers if n in current and st.pod_ready(current[n]))
    if workers:
        # one field for the printer column, one to compute with
        new["workers"], new["readyWorkers"] = f"{ready}/{len(workers)}", ready
    everything = all(n in current and st.pod_phase(current[n]) == "Running" for n in wanted)
    if deadline is not None and start is not None:
        plan.wake_in(start + deadline - now)
    if everything or (spare and head_running):
        message = f"{len(wanted)} pod(s) running"
        if spec.ray_cluster:
            message += f"; workflow runners on RayCluster {spec.ray_cluster}"
        if not everything:
            problems = [f"{n}: {st.pod_problem(current[n])}" for n in workers
                        if n in current and st.pod_problem(current[n])]
            message = "; ".join([f"the head is running, {ready} of {len(workers)} workers ready", *waits, *problems])
        if spec.metrics_enabled:  # without the endpoint there is no progress to miss
            stalled = _stall(plan, new, start, now, spec.progress_deadline_seconds or p.stall_after)
        return _finish(p, st.RUNNING, st.PODS_RUNNING, message, stalled)
    problems = waits + [f"{n}: {st.pod_problem(current[n])}" for n in wanted
                        if n in current and st.pod_problem(current[n])]
    # pods created by this very plan count as pending: the status is written after they are (Controller.apply)
    made = set(current) | {_name(m) for m in missing}
    reason = st.PODS_PENDING if all(n in made for n in wanted) else st.CREATING
    if queued:
        reason = st.WAITING_FOR_ADMISSION
    elif any(st.pod_waits_for_secret(current[n]) for n in wanted if n in current):
        reason = st.WAITING_FOR_SECRET
    message = "; ".join(problems) or f"waiting for {len(wanted)} pod(s) to run"
    if p.old.get("reason") == st.RETRYING and missing:
        reason, message = st.RETRYING, p.old.get("message") or message
    return _finish(p, st.PENDING, reason, message)


STEPS = (held, refused, finished_or_new_run, children, stale_pods, suspended, waiting)


def plan_job(
    job: dict[str, Any],
    spec: JobSpec,
    config: ConfigResult | None,
    observed: Observed,
    *,
    now: float,
    stall_after: float | None = None,
    progress: dict[str, Any] | None = None,
    held: Waiting | None = None,
    waiting: Waiting | None = None,
) -> Plan:
    """Decide everything for one RFTJob: the steps in order, the first that ends the pass gives the plan.

    `config` is None only with `held` (the config could not be read). `held` is an input that is missing,
    `waiting` a dependency of the pods that is not ready (see the module's docstring).
    """
    p = begin(job, spec, config, observed, now=now, stall_after=stall_after, progress=progress, held=held,
              waiting=waiting)
    for step in STEPS:
        plan = step(p)
        if plan is not None:
            return plan
    return pod_outcome(p)


def _replace_workers(plan: Plan, new: dict[str, Any], ended: list[dict[str, Any]], now: float) -> list[str]:
    """Delete the workers that ended (to be created again once gone), each after its backoff; counted in
    status.workerRestarts. Returns what waits for its backoff, for the status message."""
    restarts = int(new.get("workerRestarts") or 0)
    waits = []
    for pod in ended:
        how = "failed" if st.pod_phase(pod) == "Failed" else "ended"
        why = f"worker pod {_name(pod)} {how}: {st.pod_failure(pod, CONTAINER)}"
        ended_at = st.pod_finished_at(pod, CONTAINER)
        due = None if ended_at is None else ended_at + worker_backoff(restarts)
        if due is not None and now < due:
            plan.wake_in(due - now)
            # a time, not a countdown: the message (and so the status) stays the same until then
            waits.append(f"{why}; replacing it at {st.timestamp(due)} (backoff after {restarts} restarts)")
            continue
        # counted in the same status write that precedes the delete (at most once more if the operator stops
        # between the two: the pod is then seen failed again)
        restarts += 1
        plan.delete_pod(pod)
        plan.events.append(("Warning", st.WORKER_RESTARTED,
                            f"{why}; replacing it (worker restart {restarts}), the head keeps running"))
    if restarts:
        new["workerRestarts"] = restarts
    return waits


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


def _finished(p: Pass) -> Plan:
    """A job that ended stays ended; finished pods stay for their logs until ttlSecondsAfterFinished."""
    plan, old = p.plan, p.old
    for pod in p.observed.pods:
        if st.pod_phase(pod) not in ("Succeeded", "Failed"):
            plan.delete_pod(pod)
    ttl = p.spec.ttl_seconds_after_finished
    done = st.parse_time(old.get("completionTime"))
    if ttl is not None and done is not None:
        if p.now >= done + ttl:
            # children go, the RFTJob stays: GitOps tools would re-create a deleted one
            for pod in p.observed.pods:
                plan.delete_pod(pod)
            for kind in ("configmaps", "services"):
                for obj in p.observed.of(kind):
                    plan.delete.append((kind, _name(obj)))
            if not old.get("cleanedUp"):
                p.new["cleanedUp"] = True
                plan.events.append(("Normal", "CleanedUp", f"ttlSecondsAfterFinished {ttl} passed: pods removed"))
        else:
            plan.wake_in(done + ttl - p.now)
    if p.config is None or p.digest == "":
        p.new["specHash"] = old.get("specHash")  # the input could not be read: what ended stays as it is
    return _finish(p, old["phase"], old.get("reason") or old["phase"], old.get("message") or "")


def _finish(p: Pass, phase: str, reason: str, message: str,
            stalled: tuple[bool, str, str] | None = None) -> Plan:
    """The pass's plan with the whole new status: phase, reason, message, conditions, and its events."""
    new, old, plan = p.new, p.old, p.plan
    generation = (p.job.get("metadata") or {}).get("generation")
    new.update(phase=phase, reason=reason, message=_short(message))
    progress = new.get("progress") or {}
    if progress.get("step") is not None:
        # a printer column can show one field only, so step and total are joined here
        total = progress.get("totalSteps")
        new["steps"] = f"{progress['step']}/{total}" if total else str(progress["step"])
    if generation is not None:
        new["observedGeneration"] = generation
    new["conditions"] = st.build_conditions(phase, reason, new["message"], stalled=stalled,
                                            old=old.get("conditions"), now=p.now, generation=generation)
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
