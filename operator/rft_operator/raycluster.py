"""KubeRay RayClusters a job joins (spec.rayClusterRef): when one is ready, read from its status (pure).

Facts from KubeRay's API (ray.io/v1 RayCluster): `status.state` is `ready` once all its pods are ready
(`suspended` when spec.suspend removed them; `unhealthy`, `failed`); KubeRay 1.2+ also writes conditions,
`HeadPodReady` among them, which is what a client of the head needs; `status.head.serviceName` names the head
Service (KubeRay 1.1+), otherwise `<cluster>-head-svc`. The operator never writes a RayCluster.
"""

from __future__ import annotations

from typing import Any

HEAD_POD_READY = "HeadPodReady"
SUSPENDED_CONDITIONS = ("RayClusterSuspended", "RayClusterSuspending")


def ready(body: dict[str, Any]) -> tuple[bool, str]:
    """(whether the job's pod may join the RayCluster now, what its status says)."""
    spec, status = body.get("spec") or {}, body.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if isinstance(c, dict)}
    if spec.get("suspend") or any((conditions.get(t) or {}).get("status") == "True" for t in SUSPENDED_CONDITIONS):
        return False, "it is suspended"
    head = conditions.get(HEAD_POD_READY)
    if head is not None:
        if head.get("status") == "True":
            return True, "its head pod is ready"
        detail = head.get("message") or head.get("reason") or "not yet"
        return False, f"{HEAD_POD_READY} is {head.get('status') or 'unknown'}: {detail}"
    state = status.get("state")
    if state == "ready":
        return True, "its state is ready"
    return False, f"its state is {state}" if state else "KubeRay has not reported its state yet"
