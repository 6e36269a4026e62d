"""The RBAC rules the operator needs, derived from the table every API call goes through."""

from __future__ import annotations

from typing import Any

from rft_operator.kube import API_CALLS


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
