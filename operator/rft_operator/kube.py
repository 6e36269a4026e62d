"""Every Kubernetes API call of the operator goes through `Kube.call`, checked against one table.

The table `API_CALLS` is the single place that says which resources the operator touches and how; the RBAC
registry (`rft_operator.rbac`) is derived from it, and `Kube.call` refuses a (resource, verb) it does not
list, so a new API call cannot ship without its RBAC rule.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from rft_operator.connection import Connection, KubeconfigError, load_connection

GROUP = "rft.dev"
VERSION = "v1alpha1"
PLURAL = "rftjobs"
KIND = "RFTJob"
RUNTIME_PLURAL = "clusterrftruntimes"
RUNTIME_KIND = "ClusterRFTRuntime"


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
RUNTIMES = Resource(GROUP, VERSION, RUNTIME_PLURAL, namespaced=False)
PODS = Resource("", "v1", "pods")
CONFIGMAPS = Resource("", "v1", "configmaps")
SERVICES = Resource("", "v1", "services")
PVCS = Resource("", "v1", "persistentvolumeclaims")
EVENTS = Resource("", "v1", "events")
LEASES = Resource("coordination.k8s.io", "v1", "leases")
# KubeRay's RayCluster (ray.io/v1): read, never written, by jobs with spec.rayClusterRef
RAYCLUSTERS = Resource("ray.io", "v1", "rayclusters")

# (resource, subresource) -> verbs. The kopf framework's own calls are listed too (watching RFTJobs, runtimes
# and children), because the service account must allow them as well.
API_CALLS: dict[tuple[Resource, str | None], frozenset[str]] = {
    # kopf lists/watches jobs (the reconcile reads them from that watch); patch removes the finalizer an
    # earlier release's kopf daemons put on each job (once per job; kopf itself adds none now)
    (RFTJOBS, None): frozenset({"list", "watch", "patch"}),
    (RFTJOBS, "status"): frozenset({"patch"}),
    # platform runtimes, cluster-scoped: watched, never written
    (RUNTIMES, None): frozenset({"list", "watch"}),
    # children: kopf lists/watches each kind once, label-selected (the reconcile reads those caches); the
    # controller creates and deletes them
    (PODS, None): frozenset({"list", "watch", "create", "delete"}),
    # get: spec.configFrom (the user's ConfigMap, not watched); patch: the config changed; delete: TTL
    (CONFIGMAPS, None): frozenset({"get", "list", "watch", "create", "patch", "delete"}),
    (SERVICES, None): frozenset({"list", "watch", "create", "delete"}),
    # owned claims are created once and only ever removed by garbage collection with their RFTJob
    (PVCS, None): frozenset({"list", "watch", "create"}),
    (EVENTS, None): frozenset({"create"}),
    # spec.rayClusterRef: is the user's RayCluster ready, and what is its head Service
    (RAYCLUSTERS, None): frozenset({"get"}),
}

# Leader election (rft_operator.leader), in the operator's own namespace only, on one Lease: kept apart so that
# RBAC grants it there (rbac.leader_election_rules) and not in every namespace the operator watches.
LEADER_CALLS: dict[tuple[Resource, str | None], frozenset[str]] = {
    (LEASES, None): frozenset({"get", "create", "patch"}),
}

_METHOD = {"get": "GET", "list": "GET", "create": "POST", "patch": "PATCH", "delete": "DELETE"}
REQUEST_TIMEOUT_SECONDS = 30.0


def cluster_problem(timeout: float = 10.0) -> str | None:
    """None when the API server answers; else one line saying which server failed and how.

    `/version` is a non-resource URL every client may read (no RBAC rule needed), so a failure here is about
    configuration or reachability, never about permissions the operator lacks.
    """
    try:
        connection = load_connection()
    except (KubeconfigError, OSError) as exc:
        return f"no usable Kubernetes configuration ({exc}); set KUBECONFIG or run in a pod with a service account"
    kube = Kube(connection, timeout=timeout)
    try:
        status, _, _ = kube.request("GET", "/version")
    except KubeError as exc:
        return f"cannot reach the Kubernetes API server at {connection.server}: {str(exc).splitlines()[0][:300]}"
    finally:
        kube.close()
    if status >= 400:
        return f"the Kubernetes API server at {connection.server} answered /version with {status}"
    return None


class KubeError(Exception):
    """An API call that failed; `status` is the HTTP status (0 when the server was not reached)."""

    def __init__(self, status: int, reason: str, message: str = ""):
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason}: {message}".strip())


class Kube:
    """A small JSON client of the API server (standard library only).

    Each thread that calls it keeps one persistent connection: the operator's reconcile threads never wait
    for a pool slot nor throw connections away (the official client's pool of 10 did, with 16 threads).
    """

    def __init__(self, connection: Connection | None, timeout: float = REQUEST_TIMEOUT_SECONDS):
        self.connection = connection
        self.timeout = timeout
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._ssl: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls) -> Kube:
        """A client with the connection settings of `load_connection()`."""
        return cls(load_connection())

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        assert self.connection is not None, "Kube(None) refuses calls only; it has no server"
        url = urlsplit(self.connection.server)
        if url.scheme == "https":
            with self._lock:
                if self._ssl is None:
                    self._ssl = self.connection.ssl_context()
                context = self._ssl
            conn = http.client.HTTPSConnection(url.hostname, url.port or 443, timeout=self.timeout, context=context)
        else:
            conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=self.timeout)
        self._local.conn = conn
        self._local.prefix = url.path.rstrip("/")
        with self._lock:
            self._connections.append(conn)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            with self._lock:
                if conn in self._connections:
                    self._connections.remove(conn)
        self._local.conn = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
        """One HTTP exchange: (status, reason, body). A kept-alive connection the server closed meanwhile is
        opened again once; a 401 re-reads the credentials (a rotated token, an expired exec credential)."""
        assert self.connection is not None, "Kube(None) refuses calls only; it has no server"
        for attempt in range(3):
            fresh = getattr(self._local, "conn", None) is None
            conn = self._connection()
            sent = {"Accept": "application/json", **self.connection.headers(), **(headers or {})}
            try:
                conn.request(method, self._local.prefix + path, body=body, headers=sent)
                response = conn.getresponse()
                data = response.read()
            except (http.client.HTTPException, ConnectionError) as exc:
                self._drop()
                if not fresh and attempt == 0:
                    continue  # the server closed an idle connection: every call here is safe to send again
                raise KubeError(0, type(exc).__name__, str(exc)) from exc
            except OSError as exc:  # refused, unreachable, TLS, timeout
                self._drop()
                raise KubeError(0, type(exc).__name__, str(exc)) from exc
            if response.will_close:
                self._drop()
            if response.status == 401 and attempt < 2 and (self.connection.exec_plugin or self.connection.token_file):
                self.connection.refresh(force=True)
                with self._lock:
                    self._ssl = None  # an exec plugin may have handed out a new client certificate
                self._drop()
                continue
            return response.status, str(response.reason or ""), data
        raise KubeError(401, "Unauthorized", "the API server refused the credentials after they were read again")

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
        answer: bool = True,
    ) -> Any:
        """One API call, refused unless API_CALLS allows (resource, subresource, verb); its answer decoded
        (`answer=False`: None, the object the server sends back is not parsed)."""
        allowed = API_CALLS.get((resource, subresource), frozenset()) | LEADER_CALLS.get((resource, subresource),
                                                                                         frozenset())
        if verb not in allowed:
            raise PermissionError(
                f"{verb} on {resource.plural}{'/' + subresource if subresource else ''} is not in API_CALLS; "
                "add it there so that the RBAC rules cover it"
            )
        headers = {}
        if verb == "patch":
            headers["Content-Type"] = f"application/{patch_type}-patch+json"
        elif body is not None:
            headers["Content-Type"] = "application/json"
        path = resource.path(namespace, name, subresource)
        if params:
            path += "?" + urlencode(params)
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        status, reason, raw = self.request(_METHOD[verb], path, data, headers)
        if 200 <= status < 300 and not answer:
            return None
        text = raw.decode("utf-8") if raw else ""
        if not 200 <= status < 300:
            message = text
            try:
                payload = json.loads(text)
                reason, message = payload.get("reason", reason), payload.get("message", message)
            except ValueError:
                pass
            raise KubeError(status, reason, message)
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
            self.call("create", resource, namespace, body=body, answer=False)
            return True
        except KubeError as exc:
            if exc.status == 409:
                return False
            raise

    def delete(self, resource: Resource, namespace: str, name: str) -> bool:
        """Delete in the background; False when it was already gone."""
        try:
            self.call("delete", resource, namespace, name, body={"propagationPolicy": "Background"}, answer=False)
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
