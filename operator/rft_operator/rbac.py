"""The RBAC rules the operator needs, derived from the table every API call goes through."""

from __future__ import annotations

from typing import Any

from rft_operator.kube import API_CALLS, LEADER_CALLS

# verbs RBAC can narrow to named objects (create, list and watch name no object yet)
_NAMEABLE = frozenset({"get", "patch", "update", "delete"})


def _rules(cluster_scoped: bool | None) -> list[dict[str, Any]]:
    merged: dict[tuple[str, str], set[str]] = {}
    for (resource, subresource), verbs in API_CALLS.items():
        if cluster_scoped is not None and resource.namespaced == cluster_scoped:
            continue
        name = resource.plural + (f"/{subresource}" if subresource else "")
        merged.setdefault((resource.group, name), set()).update(verbs)
    return [
        {"apiGroups": [group], "resources": [name], "verbs": sorted(verbs)}
        for (group, name), verbs in sorted(merged.items())
    ]


def required_rules() -> list[dict[str, Any]]:
    """ClusterRole rules: exactly the API groups, resources and verbs in `kube.API_CALLS`."""
    return _rules(None)


def namespaced_rules() -> list[dict[str, Any]]:
    """The rules on namespaced resources: what a Role grants in each namespace a namespaced operator watches."""
    return _rules(False)


def cluster_scoped_rules() -> list[dict[str, Any]]:
    """The rules on cluster-scoped resources (the runtimes): a ClusterRole even for a namespaced operator."""
    return _rules(True)


def leader_election_rules(lease_name: str) -> list[dict[str, Any]]:
    """Role rules for the operator's own namespace: `kube.LEADER_CALLS`, narrowed to the one Lease it uses."""
    rules = []
    for (resource, _sub), verbs in sorted(LEADER_CALLS.items(), key=lambda kv: kv[0][0].plural):
        if verbs - _NAMEABLE:
            rules.append({"apiGroups": [resource.group], "resources": [resource.plural],
                          "verbs": sorted(verbs - _NAMEABLE)})
        if verbs & _NAMEABLE:
            rules.append({"apiGroups": [resource.group], "resources": [resource.plural],
                          "resourceNames": [lease_name], "verbs": sorted(verbs & _NAMEABLE)})
    return rules
