"""What the operator knows without asking the API server: the watch streams' latest objects.

kopf watches RFTJobs, and the children of every job (pods, services, configmaps, claims) once per kind with a
server-side label selector; reconciles read from memory. Three things keep memory small and reads correct:

- a job is kept as compact JSON of what a reconcile reads (`JobStore`: no managedFields, no last-applied
  annotation), parsed again for each pass, which also gives each pass a private copy;
- children are stored trimmed to the fields a reconcile reads (no managedFields, no pod spec beyond images, a
  ConfigMap's data as its digest), packed as compact JSON too;
- the operator's own status writes are laid over the watched job (`OwnWrites`) until the watch shows them:
  the event that confirms a write can arrive after a pod's deletion event, and a reconcile that saw the
  deletion with the old status would recreate the pod of a finished attempt.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any

from rft_operator.builders import JOB_LABEL, MANAGED_BY

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
# the server-side selector of every child watch: only the operator's own objects travel
CHILD_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
CHILD_KINDS = ("pods", "services", "configmaps", "persistentvolumeclaims")
# a copy of the whole object kubectl's client-side apply keeps: never read, as large as the spec
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_JOB_META = ("name", "namespace", "uid", "resourceVersion", "generation", "labels", "annotations", "finalizers",
             "deletionTimestamp", "creationTimestamp")
_POD_CONDITION = ("type", "status", "reason", "message", "lastTransitionTime")
_POD_STATUS = ("phase", "podIP", "reason", "message")


def _resource_version(body: dict[str, Any]) -> int | None:
    value = (body.get("metadata") or {}).get("resourceVersion")
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def data_digest(configmap: dict[str, Any]) -> str:
    """A digest of a ConfigMap's data: what the index keeps of it (`dataDigest`), or computed from `data`."""
    if "dataDigest" in configmap:
        return configmap["dataDigest"]
    blob = json.dumps(configmap.get("data") or {}, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def trim_job(body: Any) -> dict[str, Any]:
    """An RFTJob as a reconcile reads it: identity, labels, finalizers, deletion, spec and status."""
    meta = body.get("metadata") or {}
    kept = {k: meta[k] for k in _JOB_META if meta.get(k) is not None}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != LAST_APPLIED}
    if annotations:
        kept["annotations"] = annotations
    else:
        kept.pop("annotations", None)
    out: dict[str, Any] = {"metadata": kept, "spec": body.get("spec") or {}}
    if body.get("status"):
        out["status"] = body["status"]
    return out


def _pod_status(status: dict[str, Any]) -> dict[str, Any]:
    out = {k: status[k] for k in _POD_STATUS if status.get(k) is not None}
    if status.get("conditions"):
        out["conditions"] = [{k: c[k] for k in _POD_CONDITION if c.get(k) is not None}
                             for c in status["conditions"]]
    containers = []
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        kept: dict[str, Any] = {}
        if state.get("waiting"):
            kept["waiting"] = {k: state["waiting"][k] for k in ("reason", "message") if state["waiting"].get(k)}
        if state.get("terminated"):
            kept["terminated"] = {k: state["terminated"][k] for k in ("exitCode", "reason", "message", "finishedAt")
                                  if state["terminated"].get(k) is not None}
        if state.get("running"):
            kept["running"] = {}
        containers.append({"name": cs.get("name"), "state": kept})
    if containers:
        out["containerStatuses"] = containers
    return out


def trim_child(kind: str, body: Any) -> dict[str, Any]:
    """The child as a reconcile reads it: identity, labels and deletion, plus per-kind state."""
    meta = body.get("metadata") or {}
    keep: dict[str, Any] = {
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "labels",
                                                          "deletionTimestamp") if meta.get(k) is not None},
    }
    if kind == "pods":
        spec = body.get("spec") or {}
        # the images tell which default image an older release resolved (podhash.legacy_digests)
        keep["spec"] = {"containers": [{"name": c.get("name"), "image": c.get("image")}
                                       for c in spec.get("containers") or []]}
        if spec.get("schedulingGates"):
            # Kueue's admission gate: while it is on the job is WaitingForAdmission and its deadline waits
            keep["spec"]["schedulingGates"] = [{"name": g.get("name")} for g in spec["schedulingGates"]]
        if body.get("status") is not None:
            keep["status"] = _pod_status(dict(body["status"]))
    elif kind == "configmaps":
        keep["dataDigest"] = data_digest({"data": dict(body.get("data") or {})})
    return keep


def pack(obj: Any) -> bytes:
    """An object kept for long as one compact block: a few long-lived bytes objects instead of many small
    dicts and strings, which would pin the Python allocator's arenas that the watch's transient bodies use."""
    return json.dumps(obj, separators=(",", ":")).encode()


def unpack(blob: bytes) -> Any:
    """A private copy of what `pack` kept."""
    return json.loads(blob)


def child_key(namespace: str | None, body: Any) -> tuple[str, str] | None:
    """(namespace, job name) of a child, None for objects that are not a job's."""
    meta = body.get("metadata") or {}
    job = (meta.get("labels") or {}).get(JOB_LABEL)
    if not job or (meta.get("labels") or {}).get(MANAGED_BY_LABEL) != MANAGED_BY:
        return None
    return (namespace or meta.get("namespace") or "", job)


class JobStore:
    """The latest of every watched RFTJob, as compact JSON (written and read in the event loop's thread)."""

    def __init__(self) -> None:
        self._jobs: dict[tuple[str, str], bytes] = {}
        # (runtimeRef name or "" for the default, phase) of each job: which jobs a runtime's change concerns
        self._runtime: dict[tuple[str, str], tuple[str, str]] = {}

    def __len__(self) -> int:
        return len(self._jobs)

    def put(self, key: tuple[str, str], body: Any) -> None:
        """Keep the job as the watch delivered it (trimmed)."""
        job = trim_job(body)
        self._jobs[key] = pack(job)
        ref = (job["spec"].get("runtimeRef") or {}).get("name") or ""
        self._runtime[key] = (ref, (job.get("status") or {}).get("phase") or "")

    def get(self, key: tuple[str, str]) -> dict[str, Any] | None:
        """A private copy of the job, None once it is gone."""
        raw = self._jobs.get(key)
        return None if raw is None else unpack(raw)

    def raw(self, key: tuple[str, str]) -> bytes | None:
        """The job as kept (`unpack` makes it a dict), None once it is gone."""
        return self._jobs.get(key)

    def forget(self, key: tuple[str, str]) -> None:
        """The job was deleted."""
        self._jobs.pop(key, None)
        self._runtime.pop(key, None)

    def waiting_for_runtime(self, name: str) -> list[tuple[str, str]]:
        """Jobs a change of runtime `name` may concern now: those not running yet that name it, or that name
        none (the default may be this one). Running and finished jobs keep what their pods were made with."""
        return [key for key, (ref, phase) in self._runtime.items()
                if ref in (name, "") and phase in ("", "Pending", "Suspended")]


class OwnWrites:
    """The status the operator last wrote for each job, laid over the watched job until the watch shows it.

    kopf keeps each job's latest body for its daemon already; this holds only what the watch may not have
    delivered yet, so memory stays one copy of each job.
    """

    def __init__(self, expire_seconds: float = 30.0) -> None:
        self._written: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any], float]] = {}
        self._lock = threading.Lock()
        self.expire_seconds = expire_seconds

    def wrote(self, namespace: str, name: str, body: dict[str, Any], before: str | None = None) -> None:
        """The job as the operator's own status write left it (the server's answer); `before` is the
        resourceVersion of the job the write was made from.

        A server bumps the resourceVersion on every write. One that answered with the version the job already
        had (kmock keeps whatever the client sent) cannot tell an old watched job from the written one by
        version, so such a write is confirmed by its status instead.
        """
        version = (body.get("metadata") or {}).get("resourceVersion")
        with self._lock:
            previous = self._written.get((namespace, name))
            older = {before, previous[0]["metadata"]["resourceVersion"] if previous else None} - {None}
            if version in older:
                version = None
            # packed: hundreds of these live for seconds while a burst of jobs is created
            self._written[(namespace, name)] = ({"metadata": {"resourceVersion": version}},
                                                pack(body.get("status") or {}), time.monotonic())

    def apply(self, namespace: str, name: str, job: dict[str, Any]) -> dict[str, Any]:
        """`job` (a private copy) with the operator's newer status write in place of its status."""
        with self._lock:
            entry = self._written.get((namespace, name))
        if entry is None:
            return job
        marker, status, since = entry
        written, watched = _resource_version(marker), _resource_version(job)
        if written is not None and watched is not None:
            seen = watched >= written
        else:  # a server without numeric or bumped versions: the watch shows the write when it shows its status
            seen = (job.get("status") or {}) == unpack(status)
        if seen or time.monotonic() - since > self.expire_seconds:
            with self._lock:
                if self._written.get((namespace, name)) is entry:
                    del self._written[(namespace, name)]
            return job
        return {**job, "status": unpack(status)}

    def forget(self, namespace: str, name: str) -> None:
        """The job was deleted."""
        with self._lock:
            self._written.pop((namespace, name), None)
