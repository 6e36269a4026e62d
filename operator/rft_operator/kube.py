"""Every Kubernetes API call of the operator goes through `Kube.call`, checked against one table.

The table `API_CALLS` is the single place that says which resources the operator touches and how; the RBAC
registry (`rft_operator.rbac`) is derived from it, and `Kube.call` refuses a (resource, verb) it does not
list, so a new API call cannot ship without its RBAC rule.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

GROUP = "rft.dev"
VERSION = "v1alpha1"
PLURAL = "rftjobs"
KIND = "RFTJob"


@dataclass(frozen=True)
class Resource:
    """One API resource the operator uses: where it lives and the verbs it needs on it."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
        """The REST path of the collection, an object, or its subresource."""
        base = "/api/" + self.version if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name, safe='')}"
        if subresource:
            base += f"/{subresource}"
        return base


RFTJOBS = Resource(GROUP, VERSION, PLURAL)
PODS = Resource("", "v1", "pods")
CONFIGMAPS = Resource("", "v1", "configmaps")
SERVICES = Resource("", "v1", "services")
PVCS = Resource("", "v1", "persistentvolumeclaims")
EVENTS = Resource("", "v1", "events")
LEASES = Resource("coordination.k8s.io", "v1", "leases")

# (resource, subresource) -> verbs. The kopf framework's own calls are listed too (watching RFTJobs and children,
# its finalizer patches on RFTJobs, its warning events), because the service account must allow them as well.
API_CALLS: dict[tuple[Resource, str | None], frozenset[str]] = {
    # kopf lists/watches jobs (the reconcile reads them from that watch) and patches its finalizer in
    (RFTJOBS, None): frozenset({"list", "watch", "patch"}),
    (RFTJOBS, "status"): frozenset({"patch"}),
    # children: kopf lists/watches each kind once, label-selected (the reconcile reads those caches); the
    # controller creates and deletes them
    (PODS, None): frozenset({"list", "watch", "create", "delete"}),
    # get: spec.configFrom (the user's ConfigMap, not watched); patch: the config changed; delete: TTL
    (CONFIGMAPS, None): frozenset({"get", "list", "watch", "create", "patch", "delete"}),
    (SERVICES, None): frozenset({"list", "watch", "create", "delete"}),
    # owned claims are created once and only ever removed by garbage collection with their RFTJob
    (PVCS, None): frozenset({"list", "watch", "create"}),
    (EVENTS, None): frozenset({"create"}),
}

# Leader election (rft_operator.leader), in the operator's own namespace only, on one Lease: kept apart so that
# RBAC grants it there (rbac.leader_election_rules) and not in every namespace the operator watches.
LEADER_CALLS: dict[tuple[Resource, str | None], frozenset[str]] = {
    (LEASES, None): frozenset({"get", "create", "patch"}),
}

_METHOD = {"get": "GET", "list": "GET", "create": "POST", "patch": "PATCH", "delete": "DELETE"}


def load_configuration() -> Any:
    """In-cluster service account, else the kubeconfig KUBECONFIG names (read now, not at import time).

    Both the operator's own client and kopf's login use this, so they always talk to the same server with
    the same credentials (exec plugins and auth providers included, as the official client supports them).
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ):
        config.load_incluster_config(client_configuration=configuration)
    else:
        path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        config.load_kube_config(config_file=path.split(os.pathsep)[0], client_configuration=configuration)
    return configuration


def cluster_problem(timeout: float = 10.0) -> str | None:
    """None when the API server answers; else one line saying which server failed and how.

    `/version` is a non-resource URL every client may read (no RBAC rule needed), so a failure here is about
    configuration or reachability, never about permissions the operator lacks.
    """
    try:
        configuration = load_configuration()
    except Exception as exc:  # no kubeconfig, a broken one, an exec plugin that fails
        return f"no usable Kubernetes configuration ({exc}); set KUBECONFIG or run in a pod with a service account"
    from kubernetes import client

    api = client.ApiClient(configuration)
    try:
        request = api.param_serialize("GET", "/version", header_params={"Accept": "application/json"},
                                      auth_settings=["BearerToken"])
        response = api.call_api(*request, _request_timeout=timeout)
        response.read()
        if response.status >= 400:
            return f"the Kubernetes API server at {configuration.host} answered /version with {response.status}"
    except Exception as exc:  # connection refused, DNS, TLS, timeout
        reason = str(getattr(exc, "reason", "") or exc).splitlines()[0][:300]
        return f"cannot reach the Kubernetes API server at {configuration.host}: {reason}"
    finally:
        api.close()
    return None


class KubeError(Exception):
    """An API call that failed; `status` is the HTTP status (0 when the server was not reached)."""

    def __init__(self, status: int, reason: str, message: str = ""):
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason}: {message}".strip())


class Kube:
    """A small JSON client over the official client's connection settings (auth, TLS, proxies)."""

    def __init__(self, api_client: Any):
        self._api = api_client
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls) -> Kube:
        """A client with the connection settings of `load_configuration()`."""
        from kubernetes import client

        return cls(client.ApiClient(load_configuration()))

    def call(
        self,
        verb: str,
        resource: Resource,
        namespace: str | None = None,
        name: str | None = None,
        *,
        body: Any = None,
        subresource: str | None = None,
        params: dict[str, str] | None = None,
        patch_type: str = "merge",
    ) -> Any:
        """One API call, refused unless API_CALLS allows (resource, subresource, verb)."""
        allowed = API_CALLS.get((resource, subresource), frozenset()) | LEADER_CALLS.get((resource, subresource),
                                                                                         frozenset())
        if verb not in allowed:
            raise PermissionError(
                f"{verb} on {resource.plural}{'/' + subresource if subresource else ''} is not in API_CALLS; "
                "add it there so that the RBAC rules cover it"
            )
        headers = {"Accept": "application/json"}
        if verb == "patch":
            headers["Content-Type"] = f"application/{patch_type}-patch+json"
        elif body is not None:
            headers["Content-Type"] = "application/json"
        path = resource.path(namespace, name, subresource)
        query = list((params or {}).items()) or None
        request = self._api.param_serialize(
            _METHOD[verb], path, query_params=query, header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(*request, _request_timeout=30)
            response.read()
        except Exception as exc:  # urllib3 / ssl errors: the server was not reached
            status = getattr(exc, "status", 0) or 0
            raise KubeError(status, type(exc).__name__, str(exc)) from exc
        text = response.data.decode("utf-8") if response.data else ""
        if not 200 <= response.status < 300:
            reason, message = str(response.reason or ""), text
            try:
                payload = json.loads(text)
                reason, message = payload.get("reason", reason), payload.get("message", message)
            except ValueError:
                pass
            raise KubeError(response.status, reason, message)
        return json.loads(text) if text else None

    # ---- conveniences with the idempotent behaviour reconciliation needs

    def list(self, resource: Resource, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        """Objects with all these labels (filtered here too: not every server honours labelSelector)."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        data = self.call("list", resource, namespace, params={"labelSelector": selector}) or {}
        items = data.get("items") or []
        return [
            o for o in items
            if all((o.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in labels.items())
            and (o.get("metadata", {}).get("namespace") in (None, namespace))
        ]

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return self.call("get", resource, namespace, name)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, resource: Resource, namespace: str, body: dict[str, Any]) -> bool:
        """Create; False when it already exists (a replayed event or a restart, not an error)."""
        try:
            self.call("create", resource, namespace, body=body)
            return True
        except KubeError as exc:
            if exc.status == 409:
                return False
            raise

    def delete(self, resource: Resource, namespace: str, name: str) -> bool:
        """Delete in the background; False when it was already gone."""
        try:
            self.call("delete", resource, namespace, name, body={"propagationPolicy": "Background"})
            return True
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise

    def patch(self, resource: Resource, namespace: str, name: str, body: Any,
              subresource: str | None = None, patch_type: str = "merge") -> Any:
        """JSON merge patch (None values remove keys), or with patch_type="json" a JSON patch (a list of ops)."""
        return self.call("patch", resource, namespace, name, body=body, subresource=subresource,
                         patch_type=patch_type)
