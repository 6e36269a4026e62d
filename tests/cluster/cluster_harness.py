"""Helpers of the cluster tests: polling, the operator run in-process against a real API server, playing the
kubelet and KubeRay.

Everything here skips (with the reason) when KUBECONFIG names no reachable cluster. The tests assume nothing
beyond a conformant API server: pods need not be schedulable, images need not be pullable; there may be no
node, no kubelet and no scheduler at all (the tests write pods' status themselves).
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "rft.dev", "v1alpha1", "rftjobs"
RUNTIMES = "clusterrftruntimes"
# every wait is bounded: what a conformant control plane does in well under this on a busy 2-core machine
TIMEOUT = 60.0
# the operator the tests run: fast loops, so that every wait is short (all are bounded)
OPERATOR_ENV = {
    "RFT_OPERATOR_METRICS_PORT": "0",
    "RFT_OPERATOR_RESYNC_SECONDS": "2",
    "RFT_OPERATOR_CONFIG_FROM_REFRESH_SECONDS": "1",
    "RFT_OPERATOR_RAY_CLUSTER_REFRESH_SECONDS": "1",
}


def wait_for(check: Callable[[], Any], timeout: float = TIMEOUT, what: str = "condition") -> Any:
    """Poll until check() is truthy (API errors count as not yet)."""
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (ApiException, KeyError, TypeError):
            value = None
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.contextmanager
def env(**values: str) -> Iterator[None]:
    """Environment variables set for the block only."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def operator_for(namespace: str, **extra_env: str) -> Iterator[Any]:
    """The real operator (rft-operator's handlers, in kopf), watching one namespace with the kubeconfig's
    credentials, until the block ends."""
    from kopf.testing import KopfRunner

    from rft_operator import handlers

    handlers.STATE.metrics_port = None
    with env(**{**OPERATOR_ENV, **extra_env}), KopfRunner(
            ["run", "--standalone", "-n", namespace, "-m", "rft_operator.handlers"], timeout=120) as runner:
        wait_for(lambda: handlers.STATE.metrics_port, 30, "the operator to start")
        yield runner
    assert runner.exit_code == 0, runner.output


def install_crd(api_client: Any, body: dict[str, Any]) -> bool:
    """Create a CRD unless one of that name exists (an installed one is left as it is); wait until it serves.
    True when this call created it."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ext = client.ApiextensionsV1Api(api_client)
    created = True
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        created = False

    def established() -> bool:
        crd = ext.read_custom_resource_definition(body["metadata"]["name"])
        return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))

    wait_for(established, 60, f"the CRD {body['metadata']['name']} to be established")
    return created


def reconciles() -> float:
    """rft_operator_reconciles_total of the operator running in this process, from its /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from rft_operator import handlers

    with urllib.request.urlopen(f"http://127.0.0.1:{handlers.STATE.metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "rft_operator_reconciles_total")


def raw_request(api_client: Any, method: str, path: str, *, headers: dict[str, str] | None = None,
                body: Any = None, params: list[tuple[str, str]] | None = None) -> tuple[int, Any]:
    """A request the generated client has no method for (apply patches, Table output): (status, JSON)."""
    import json

    request = api_client.param_serialize(method, path, query_params=params,
                                         header_params={"Accept": "application/json", **(headers or {})},
                                         body=body, auth_settings=["BearerToken"])
    response = api_client.call_api(*request)
    response.read()
    return response.status, json.loads(response.data or b"null")


def table(api_client: Any, path: str) -> dict[str, dict[str, Any]]:
    """What `kubectl get` prints for a collection: {object name: {column: cell}} (every column, wide)."""
    code, answer = raw_request(api_client, "GET", path,
                               headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    assert code == 200, answer
    columns = [c["name"] for c in answer["columnDefinitions"]]
    return {row["object"]["metadata"]["name"]: dict(zip(columns, row["cells"], strict=True))
            for row in answer["rows"]}


def example(name: str, job: str, **spec: Any) -> dict[str, Any]:
    """examples/rftjobs/<name> named `job`, with spec fields replaced."""
    body = yaml.safe_load((ROOT / "examples" / "rftjobs" / name).read_text())
    body["metadata"] = {"name": job}
    body["spec"].update(copy.deepcopy(spec))
    return body


# pods are kept off every node (a nodeSelector no node has): nothing here needs a schedulable node
NOWHERE = {"rft.dev/test-node-that-does-not-exist": "true"}


def job(name: str, **spec: Any) -> dict[str, Any]:
    """The Tinker example without storage or image (the operator's default image applies), kept off nodes."""
    body = example("tinker.yaml", name)
    body["spec"].pop("storage", None)
    body["spec"].pop("image", None)
    body["spec"]["nodeSelector"] = dict(NOWHERE)
    body["spec"].update(copy.deepcopy(spec))
    return body


class Kube:
    """What a test does with kubectl, through the official client: RFTJobs, pods, events."""

    def __init__(self, api_client: Any, namespace: str):
        from kubernetes import client

        self.api = api_client
        self.ns = namespace
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)

    def create(self, body: dict[str, Any], strict: bool = False) -> Any:
        """Create an RFTJob (with strict field validation: kubectl's default)."""
        kwargs = {"field_validation": "Strict"} if strict else {}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body, **kwargs)

    def get(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def patch(self, name: str, body: dict[str, Any]) -> Any:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name, body)

    def delete(self, name: str) -> Any:
        return self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def wait_phase(self, name: str, phase: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The job's status once its phase is `phase`."""
        return wait_for(lambda: (lambda s: s if s.get("phase") == phase else None)(self.status(name)), timeout,
                        f"{name} to be {phase}")

    def pod(self, name: str) -> Any:
        return self.core.read_namespaced_pod(name, self.ns)

    def pods(self, job_name: str) -> list[Any]:
        return self.core.list_namespaced_pod(self.ns, label_selector=f"rft.dev/job={job_name}").items

    def set_phase(self, pod: str, phase: str, **status: Any) -> None:
        """Play the kubelet: report a pod's phase (and more of its status)."""
        self.core.patch_namespaced_pod_status(pod, self.ns, {"status": {"phase": phase, **status}})

    def events(self, job_name: str, reason: str | None = None) -> list[Any]:
        return [e for e in self.core.list_namespaced_event(self.ns).items
                if e.involved_object.name == job_name and (reason is None or e.reason == reason)]
