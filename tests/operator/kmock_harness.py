"""Test harness: an emulated Kubernetes API server (kmock) in its own thread, and the real operator against it.

The server gets its own event loop thread so that tests can be plain synchronous code that talks HTTP to it,
as kubectl would, while kopf runs in KopfRunner's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any


def _emulator_class() -> Any:
    import kmock

    class Emulator(kmock.KubernetesEmulator):
        """kmock, plus a uid on every object created without one, as every API server assigns.

        kopf keys its indexes by (namespace, name, uid): without uids a pod and a Service of the same name
        (`<job>-head`) would evict each other from the operator's caches, which no real cluster can cause.
        """

        async def _handle(self, request: Any) -> Any:
            data = getattr(request, "data", None)
            if request.resource is not None and request.action == kmock.action.CREATE and isinstance(data, dict):
                meta = data.setdefault("metadata", {})
                if isinstance(meta, dict) and not meta.get("uid"):
                    meta["uid"] = str(uuid.uuid4())
            return await super()._handle(request)

    return Emulator


class ApiServer:
    """kmock's KubernetesEmulator served on 127.0.0.1 from a background thread."""

    def __init__(self) -> None:
        self.url = ""
        self.emulator: Any = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        import kmock

        self._stop = asyncio.Event()
        async with _emulator_class()() as emulator, kmock.Server(emulator) as server:
            emulator.resources.load_bundled()
            self.emulator = emulator
            emulator.resources["rft.dev/v1alpha1/rftjobs"] = kmock.ResourceInfo(
                kind="RFTJob", singular="rftjob", namespaced=True, shortnames={"rftj"},
                subresources={"status"}, verbs={"get", "list", "watch", "create", "patch", "delete", "update"},
            )
            emulator.resources["rft.dev/v1alpha1/clusterrftruntimes"] = kmock.ResourceInfo(
                kind="ClusterRFTRuntime", singular="clusterrftruntime", namespaced=False, shortnames={"rftrt"},
                verbs={"get", "list", "watch", "create", "patch", "delete", "update"},
            )
            emulator.resources["ray.io/v1/rayclusters"] = kmock.ResourceInfo(
                kind="RayCluster", singular="raycluster", namespaced=True, subresources={"status"},
                verbs={"get", "list", "watch", "create", "patch", "delete", "update"},
            )
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def start(self) -> ApiServer:
        """Start serving; returns once the URL is known."""
        self._thread.start()
        self._ready.wait(30)
        if self._error:
            raise self._error
        return self

    def pod_creations(self, namespace: str = "default") -> int:
        """How many times anyone POSTed a pod (the tests never do, so: the operator)."""
        return len(self.emulator[f"post /api/v1/namespaces/{namespace}/pods"])

    def request_count(self) -> int:
        """How many requests the server has seen so far (a mark for `operator_requests`)."""
        return len(list(self.emulator))

    def operator_requests(self, since: int = 0) -> list[str]:
        """'METHOD path' of every request after mark `since` that is neither the tests' own nor a watch."""
        out = []
        for request in list(self.emulator)[since:]:
            if request.headers.get("User-Agent", "").startswith("Python-urllib") or request.params.get("watch"):
                continue
            out.append(f"{str(request.method).upper().split('.')[-1]} {request.url.path}")
        return out

    def operator_calls(self) -> set[tuple[str, str, str]]:
        """(API group, resource[/subresource], verb) of every request not made by the tests' own client."""
        calls = set()
        for request in list(self.emulator):
            if request.headers.get("User-Agent", "").startswith("Python-urllib"):
                continue
            parts = [p for p in request.url.path.split("/") if p]
            if parts[:1] == ["api"]:
                group, rest = "", parts[2:]
            elif parts[:1] == ["apis"] and len(parts) > 3:
                group, rest = parts[1], parts[3:]
            else:
                continue
            if not rest:
                continue  # discovery: allowed to every authenticated user
            if rest[0] == "namespaces" and len(rest) >= 3:
                rest = rest[2:]
            resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
            method = str(request.method).upper().split(".")[-1]
            if method == "GET":
                verb = "get" if len(rest) > 1 else ("watch" if request.params.get("watch") else "list")
            else:
                verb = {"POST": "create", "PATCH": "patch", "DELETE": "delete", "PUT": "update"}[method]
            calls.add((group, resource, verb))
        return calls

    def stop(self) -> None:
        """Stop the server and its thread."""
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class Client:
    """What a test does with kubectl: plain JSON over HTTP."""

    def __init__(self, url: str, timeout: float = 10.0):
        self.url = url
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        """One HTTP call; returns the decoded JSON (raises HTTPError on 4xx/5xx)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            text = resp.read().decode()
        return json.loads(text) if text else None

    @staticmethod
    def path(kind: str, namespace: str, name: str | None = None) -> str:
        """REST path of a kind the tests use."""
        base = {
            "rftjobs": f"/apis/rft.dev/v1alpha1/namespaces/{namespace}/rftjobs",
            "clusterrftruntimes": "/apis/rft.dev/v1alpha1/clusterrftruntimes",
            "rayclusters": f"/apis/ray.io/v1/namespaces/{namespace}/rayclusters",
        }.get(kind, f"/api/v1/namespaces/{namespace}/{kind}")
        return base + (f"/{name}" if name else "")

    def create(self, kind: str, namespace: str, body: dict[str, Any]) -> Any:
        """POST an object."""
        return self.request("POST", self.path(kind, namespace), body)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """GET an object, None when it does not exist."""
        try:
            return self.request("GET", self.path(kind, namespace, name))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def list(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        """Every object of a kind in a namespace."""
        items = self.request("GET", self.path(kind, namespace)).get("items") or []
        return [i for i in items if (i.get("metadata") or {}).get("namespace") in (None, namespace)]

    def patch(self, kind: str, namespace: str, name: str, body: dict[str, Any], sub: str = "") -> Any:
        """JSON merge patch."""
        path = self.path(kind, namespace, name) + (f"/{sub}" if sub else "")
        return self.request("PATCH", path, body, "application/merge-patch+json")

    def delete(self, kind: str, namespace: str, name: str) -> Any:
        """DELETE an object."""
        return self.request("DELETE", self.path(kind, namespace, name))

    def set_pod_phase(self, namespace: str, name: str, phase: str, pod_ip: str = "127.0.0.1",
                      exit_code: int | None = None) -> None:
        """Play the kubelet: report a pod's phase (and its container's exit)."""
        status: dict[str, Any] = {"phase": phase, "podIP": pod_ip}
        if exit_code is not None:
            status["containerStatuses"] = [{"name": "rft", "state": {"terminated": {
                "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error"}}}]
        self.patch("pods", namespace, name, {"status": status})


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll until check() returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (urllib.error.URLError, KeyError, TypeError):
            last = None
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")



@contextlib.contextmanager
def operator_process(liveness_port: int | None = None) -> Iterator[Any]:
    """Run the real operator (kopf, the handlers `rft-operator` runs) until the block ends."""
    from kopf.testing import KopfRunner

    from rft_operator import handlers

    handlers.STATE.metrics_port = None
    args = ["run", "-A", "--standalone", "-m", "rft_operator.handlers"]
    if liveness_port:
        args.append(f"--liveness=http://127.0.0.1:{liveness_port}/healthz")
    with KopfRunner(args, timeout=60) as runner:
        wait_for(lambda: handlers.STATE.metrics_port, 20, "the operator to start")
        yield runner
    assert runner.exit_code == 0, runner.output
