"""What the operator knows without asking the API server: the watch streams' latest objects.

kopf watches RFTJobs, and the children of every job (pods, services, configmaps, claims) once per kind with a
server-side label selector; reconciles read from memory. Two things keep memory small and reads correct:

- children are stored trimmed to the fields a reconcile reads (no managedFields, no pod spec beyond images);
- the operator's own status writes are laid over the watched job (`OwnWrites`) until the watch shows them:
  the event that confirms a write can arrive after a pod's deletion event, and a reconcile that saw the
  deletion with the old status would recreate the pod of a finished attempt.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

from rft_operator.builders import JOB_LABEL, MANAGED_BY

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
# the server-side selector of every child watch: only the operator's own objects travel
CHILD_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
CHILD_KINDS = ("pods", "services", "configmaps", "persistentvolumeclaims")


def _resource_version(body: dict[str, Any]) -> int | None:
    value = (body.get("metadata") or {}).get("resourceVersion")
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def trim_child(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The child as a reconcile reads it: identity, labels and deletion, plus per-kind state."""
    meta = body.get("metadata") or {}
    keep: dict[str, Any] = {
        "metadata": {k: copy.deepcopy(meta[k]) for k in ("name", "namespace", "uid", "resourceVersion", "labels",
                                                          "deletionTimestamp") if meta.get(k) is not None},
    }
    if kind == "pods":
        containers = ((body.get("spec") or {}).get("containers")) or []
        # the images tell which default image an older release resolved (podhash.legacy_digests)
        keep["spec"] = {"containers": [{"name": c.get("name"), "image": c.get("image")} for c in containers]}
        gates = (body.get("spec") or {}).get("schedulingGates")
        if gates:
            # Kueue's admission gate: while it is on the job is WaitingForAdmission and its deadline waits
            keep["spec"]["schedulingGates"] = copy.deepcopy(list(gates))
        if body.get("status") is not None:
            keep["status"] = copy.deepcopy(dict(body["status"]))
    elif kind == "configmaps":
        keep["data"] = copy.deepcopy(dict(body.get("data") or {}))
    return keep


def child_key(namespace: str | None, body: dict[str, Any]) -> tuple[str, str] | None:
    """(namespace, job name) of a child, None for objects that are not a job's."""
    meta = body.get("metadata") or {}
    job = (meta.get("labels") or {}).get(JOB_LABEL)
    if not job or (meta.get("labels") or {}).get(MANAGED_BY_LABEL) != MANAGED_BY:
        return None
    return (namespace or meta.get("namespace") or "", job)


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
            self._written[(namespace, name)] = ({"metadata": {"resourceVersion": version}},
                                                copy.deepcopy(body.get("status") or {}), time.monotonic())

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
            seen = (job.get("status") or {}) == status
        if seen or time.monotonic() - since > self.expire_seconds:
            with self._lock:
                if self._written.get((namespace, name)) is entry:
                    del self._written[(namespace, name)]
            return job
        return {**job, "status": copy.deepcopy(status)}

    def forget(self, namespace: str, name: str) -> None:
        """The job was deleted."""
        with self._lock:
            self._written.pop((namespace, name), None)
