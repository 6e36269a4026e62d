"""spec.podTemplate: merging a user's pod template onto the operator's pods, Kubernetes' way (pure).

The merge follows strategic-merge-patch semantics for the pod fields: maps merge key by key, a null removes a
key, lists with a merge key in the Kubernetes API (containers, initContainers and volumes by name, env by name,
ports by containerPort, volumeMounts by mountPath, ...) merge item by item, every other list is replaced
whole. A list item `{"name": "x", "$patch": "delete"}` removes item x.

The operator's own fields (the runtime container's command, args and image, its config and job-directory
mounts, the environment it sets, its ports, the GPU limit, restartPolicy, its labels) are checked, not merged:
a template that touches one is refused with the field named (the CRD's CEL rules refuse the static ones with a
422 before the operator sees them).
"""

from __future__ import annotations

import copy
from typing import Any

# patchMergeKey of the list fields of PodSpec and Container (k8s.io/api/core/v1 types.go); the field names
# are unique across the two, so one table serves both levels.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "schedulingGates": "name",
    "env": "name",
    "ports": "containerPort",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
}
DELETE = "$patch"


def merge(base: Any, overlay: Any, field: str | None = None) -> Any:
    """`overlay` merged onto `base` (neither is changed) with strategic-merge semantics."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        out = copy.deepcopy(base)
        for key, value in overlay.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = merge(out[key], value, key)
            else:
                out[key] = _clean(value, key)
        return out
    if isinstance(base, list) and isinstance(overlay, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        out = copy.deepcopy(base)
        for item in overlay:
            if not isinstance(item, dict) or key not in item:
                out.append(copy.deepcopy(item))
                continue
            at = next((i for i, b in enumerate(out) if isinstance(b, dict) and b.get(key) == item[key]), None)
            if item.get(DELETE) == "delete":
                if at is not None:
                    del out[at]
            elif at is None:
                out.append(_clean(item, None))
            else:
                out[at] = merge(out[at], item, None)
        return out
    return _clean(overlay, field)


def _clean(value: Any, field: str | None) -> Any:
    """A value new to the base: directives and nulls stripped, as the API server would store it."""
    if isinstance(value, dict):
        return {k: _clean(v, k) for k, v in value.items() if v is not None and k != DELETE}
    if isinstance(value, list):
        items = [v for v in value if not (isinstance(v, dict) and v.get(DELETE) == "delete")]
        return [_clean(v, None) for v in items]
    return copy.deepcopy(value)


def apply_template(pod: dict[str, Any], template: dict[str, Any] | None) -> dict[str, Any]:
    """The pod with a template's metadata (labels, annotations) and spec merged in."""
    if not template:
        return pod
    out = copy.deepcopy(pod)
    meta = template.get("metadata") or {}
    for key in ("labels", "annotations"):
        if meta.get(key):
            out["metadata"][key] = merge(out["metadata"].get(key) or {}, meta[key])
    if template.get("spec"):
        out["spec"] = merge(out["spec"], template["spec"])
    return out


def _container(spec: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((c for c in spec.get("containers") or [] if isinstance(c, dict) and c.get("name") == name), None)


def conflicts(template: dict[str, Any] | None, owned: dict[str, Any], where: str) -> list[str]:
    """Why a template would break the operator's pod (empty: it does not), each naming the field.

    `owned` lists what the operator decides for this pod: container (the runtime container's name),
    volumes, mount_paths, env, ports, labels, annotations, gpu (the GPU resource name, or None).
    """
    if not template:
        return []
    issues: list[str] = []
    meta = template.get("metadata") or {}
    for kind in ("labels", "annotations"):
        for key in sorted(set(meta.get(kind) or {}) & set(owned[kind])):
            issues.append(f"{where}.metadata.{kind}[{key}] is set by the operator; use another key")
    spec = template.get("spec") or {}
    if "restartPolicy" in spec:
        issues.append(f"{where}.spec.restartPolicy belongs to the operator (pods never restart in place: "
                      "spec.backoffLimit retries them); remove it")
    for volume in spec.get("volumes") or []:
        if isinstance(volume, dict) and volume.get("name") in owned["volumes"]:
            issues.append(f"{where}.spec.volumes[{volume['name']}] is the operator's volume; "
                          "name yours differently")
    name = owned["container"]
    container = _container(spec, name)
    if container is None:
        return issues
    at = f"{where}.spec.containers[{name}]"
    for key, hint in (("command", "the operator runs `rft run`"), ("args", "the operator runs `rft run`"),
                      ("image", "use spec.image")):
        if key in container:
            issues.append(f"{at}.{key} belongs to the operator ({hint}); remove it")
    for mount in container.get("volumeMounts") or []:
        if isinstance(mount, dict) and mount.get("mountPath") in owned["mount_paths"]:
            issues.append(f"{at}.volumeMounts[{mount['mountPath']}] is where the operator mounts its own "
                          "volume; mount yours at another path")
    for env in container.get("env") or []:
        if isinstance(env, dict) and env.get("name") in owned["env"]:
            issues.append(f"{at}.env[{env['name']}] is set by the operator; remove it")
    for port in container.get("ports") or []:
        if isinstance(port, dict) and (port.get("containerPort") in owned["ports"].values()
                                       or port.get("name") in owned["ports"]):
            issues.append(f"{at}.ports[{port.get('name') or port.get('containerPort')}] is the operator's port "
                          "(spec.metrics.port moves the metrics port)")
    gpu = owned.get("gpu")
    resources = container.get("resources") or {}
    if gpu and any(gpu in (resources.get(part) or {}) for part in ("limits", "requests")):
        issues.append(f"{at}.resources[{gpu}] is the operator's GPU request; set spec.gpus.perNode")
    return issues
