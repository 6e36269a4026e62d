"""The RBAC rules the operator needs, derived from the table every API call goes through."""

from __future__ import annotations

from typing import Any

from rft_operator.kube import API_CALLS, LEADER_CALLS

# verbs RBAC can narrow to named objects (create, list and watch name no object yet)
_NAMEABLE = frozenset({"get", "patch", "update", "delete"})


def required_rules() -> list[dict[str, Any]]:
    """ClusterRole/Role rules: exactly the API groups, resources and verbs in `kube.API_CALLS`."""
    merged: dict[tuple[str, str], set[str]] = {}
    for (resource, subresource), verbs in API_CALLS.items():
        name = resource.plural + (f"/{subresource}" if subresource else "")
        merged.setdefault((resource.group, name), set()).update(verbs)
    return [
        {"apiGroups": [group], "resources": [name], "verbs": sorted(verbs)}
        for (group, name), verbs in sorted(merged.items())
    ]


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
