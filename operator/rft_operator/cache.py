"""What the operator knows without asking the API server: the watch streams' latest objects.

kopf watches RFTJobs, and the children of every job (pods, services, configmaps, claims) once per kind with a
server-side label selector; reconciles read from memory. Two things keep memory small and reads correct:

- children are stored trimmed to the fields a reconcile reads (no managedFields, no pod spec beyond images);
- the operator's own status writes go into `JobCache` at once: the watch event that confirms a write can
  arrive after a pod's deletion event, and a reconcile that saw the deletion with the old status would
  recreate the pod of a finished attempt.
"""

from __future__ import annotations

import copy
import threading
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


def newer_or_unknown(incoming: dict[str, Any], current: dict[str, Any] | None) -> bool:
    """True unless both carry numeric resourceVersions and `incoming` is the older one.

    Kubernetes API servers hand out increasing integers (etcd revisions); a server that does not (or keeps
    none, like kmock) gets last-writer-wins, which is what it would get without this check.
    """
    if current is None:
        return True
    new, old = _resource_version(incoming), _resource_version(current)
    return new is None or old is None or new >= old


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


class JobCache:
    """RFTJobs as the watch last delivered them, or as the operator's own status write returned them."""

    def __init__(self) -> None:
        self._jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def observe(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        """A watch event's object (kept unless the cache already holds a newer version)."""
        with self._lock:
            if newer_or_unknown(body, self._jobs.get((namespace, name))):
                self._jobs[(namespace, name)] = body

    def wrote(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        """The object after the operator's own write."""
        self.observe(namespace, name, body)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A private copy of the job (reconciles may annotate it), None when unknown or deleted."""
        with self._lock:
            body = self._jobs.get((namespace, name))
        return copy.deepcopy(body) if body is not None else None

    def forget(self, namespace: str, name: str) -> None:
        """The job was deleted."""
        with self._lock:
            self._jobs.pop((namespace, name), None)

    def __len__(self) -> int:
        return len(self._jobs)
