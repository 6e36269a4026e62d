"""Platform runtimes: ClusterRFTRuntime objects a platform team owns, and how a job's spec is laid over one.

A runtime holds what a platform decides once for many jobs: images, resources, node selectors, tolerations,
affinity, a priority class, a pod template, the GPU resource name and a Kueue queue. A job names one with
`spec.runtimeRef.name`; a job that names none gets the runtime annotated `rft.dev/default-runtime: "true"`
(the newest, if several are). The job's own fields win (`effective_spec`).

A runtime's values reach a job's pods when they are created (a new job, a retry, a resume, a new run):
the pods' digest covers the job's own spec only, so editing a runtime never restarts running pods, as a new
operator default image does not.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

DEFAULT_ANNOTATION = "rft.dev/default-runtime"
RUNTIME_KIND = "ClusterRFTRuntime"


@dataclass(frozen=True)
class Runtime:
    """One ClusterRFTRuntime: its name and spec."""

    name: str
    spec: dict[str, Any]


def _is_default(meta: dict[str, Any]) -> bool:
    return str((meta.get("annotations") or {}).get(DEFAULT_ANNOTATION, "")).lower() == "true"


class RuntimeStore:
    """Every ClusterRFTRuntime the watch delivered (written in the event loop, read by reconcile threads:
    each write replaces a whole entry, and readers take a reference)."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[Runtime, bool, str]] = {}

    def put(self, body: Any) -> None:
        """Keep a runtime as the watch delivered it."""
        meta = body.get("metadata") or {}
        runtime = Runtime(meta["name"], copy.deepcopy(dict(body.get("spec") or {})))
        self._items = {**self._items, meta["name"]: (runtime, _is_default(meta),
                                                    str(meta.get("creationTimestamp") or ""))}

    def replace_all(self, bodies: Any) -> None:
        """Keep exactly these runtimes (what the watch's index holds now)."""
        fresh = RuntimeStore()
        for body in bodies:
            fresh.put(body)
        self._items = fresh._items

    def forget(self, name: str) -> None:
        """The runtime was deleted."""
        self._items = {k: v for k, v in self._items.items() if k != name}

    def get(self, name: str) -> Runtime | None:
        """The runtime named `name`, None when there is none."""
        entry = self._items.get(name)
        return entry[0] if entry else None

    def default(self) -> Runtime | None:
        """The default runtime: the newest of those annotated as default (as Kubernetes picks among several
        default StorageClasses), None when none is."""
        marked = [(created, name, runtime) for runtime, default, created in self._items.values()
                  for name in [runtime.name] if default]
        return max(marked)[2] if marked else None


def select(spec: dict[str, Any], store: RuntimeStore) -> tuple[Runtime | None, str | None]:
    """(the runtime that applies to a job's spec, why the job must wait): a named runtime that does not
    exist is something to wait for; no name means the default, or none."""
    name = (spec.get("runtimeRef") or {}).get("name")
    if name:
        runtime = store.get(name)
        if runtime is None:
            return None, (f"ClusterRFTRuntime {name} (spec.runtimeRef.name) does not exist; create it, or remove "
                          "spec.runtimeRef to use the default runtime")
        return runtime, None
    return store.default(), None


def _merged_map(base: Any, mine: Any) -> dict[str, Any]:
    return {**(base or {}), **(mine or {})}


def effective_spec(spec: dict[str, Any], runtime: Runtime | None) -> dict[str, Any]:
    """The job's spec with the runtime's values where the job leaves them out: maps (nodeSelector,
    resources.requests and .limits) merged key by key with the job's keys winning, the runtime's tolerations
    kept and the job's added, everything else the job's when it sets it. Images, the GPU resource name, the
    Kueue queue and the pod template are resolved by `spec.parse_spec` (they apply per backend, or before
    the job's own template)."""
    if runtime is None:
        return spec
    rt = runtime.spec
    out = dict(spec)
    for key in ("imagePullPolicy", "affinity", "priorityClassName"):
        if not out.get(key) and rt.get(key):
            out[key] = copy.deepcopy(rt[key])
    if rt.get("nodeSelector"):
        out["nodeSelector"] = _merged_map(rt["nodeSelector"], spec.get("nodeSelector"))
    if rt.get("resources"):
        mine = spec.get("resources") or {}
        out["resources"] = {part: _merged_map(rt["resources"].get(part), mine.get(part))
                            for part in ("requests", "limits") if rt["resources"].get(part) or mine.get(part)}
    if rt.get("tolerations"):
        theirs = list(rt["tolerations"])
        out["tolerations"] = theirs + [t for t in spec.get("tolerations") or [] if t not in theirs]
    return out
