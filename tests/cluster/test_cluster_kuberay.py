"""A multi-node Tinker job on an existing KubeRay RayCluster (spec.rayClusterRef), on a real API server.

The test plays KubeRay: it creates the RayCluster and writes its status as KubeRay would (state, the
HeadPodReady condition, the head Service's name). On a cluster where KubeRay runs, it skips: its operator
would race the test for the RayCluster's status.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_harness import install_crd, job, wait_for

pytestmark = pytest.mark.cluster
CRD = yaml.safe_load((Path(__file__).parent / "kuberay-raycluster-crd.yaml").read_text())
RAY, RAY_VERSION, RAYCLUSTERS = "ray.io", "v1", "rayclusters"


@pytest.fixture(scope="module")
def raycluster_crd(api_client: Any, crd_installed: None) -> Iterator[None]:
    """The RayCluster CRD of tests/cluster (KubeRay's schema), unless KubeRay's own is installed (skip)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ext = client.ApiextensionsV1Api(api_client)
    try:
        existing = ext.read_custom_resource_definition(CRD["metadata"]["name"])
    except ApiException as exc:
        if exc.status != 404:
            raise
        existing = None
    if existing is not None and (existing.metadata.labels or {}).get("app.kubernetes.io/part-of") != "rft-tests":
        pytest.skip("KubeRay's RayCluster CRD is installed in this cluster: its operator would race the test, "
                    "which plays KubeRay itself")
    created = install_crd(api_client, CRD)
    try:
        yield
    finally:
        if created:
            ext.delete_custom_resource_definition(CRD["metadata"]["name"])


def raycluster(name: str) -> dict[str, Any]:
    pod = {"spec": {"containers": [{"name": "ray-head", "image": "ghcr.io/rft-platform/rft-runtime:0.1.0"}]}}
    return {"apiVersion": f"{RAY}/{RAY_VERSION}", "kind": "RayCluster", "metadata": {"name": name},
            "spec": {"rayVersion": "2.40.0",
                     "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": pod},
                     "workerGroupSpecs": [{"groupName": "runners", "replicas": 2, "minReplicas": 2, "maxReplicas": 4,
                                           "rayStartParams": {}, "template": pod}]}}


def condition(kind: str, ok: bool, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message,
            "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def test_a_multi_node_tinker_job_joins_a_ready_raycluster_and_never_deletes_it(kube, raycluster_crd, running_operator):
    custom = kube.custom
    body = job("onray", rayClusterRef={"name": "shared"})
    body["spec"]["config"]["cluster"] = {"node_num": 3}  # Trinity's count of Ray nodes: the RayCluster's here
    kube.create(body, strict=True)

    def reason_says(text: str) -> Any:
        return (lambda s: s if s.get("reason") == "WaitingForRayCluster" and text in s.get("message", "") else None)(
            kube.status("onray"))

    status = wait_for(lambda: reason_says("to exist"), what="the job to wait for its RayCluster")
    assert status["phase"] == "Pending" and "shared" in status["message"] and not kube.pods("onray")

    custom.create_namespaced_custom_object(RAY, RAY_VERSION, kube.ns, RAYCLUSTERS, raycluster("shared"),
                                           field_validation="Strict")
    wait_for(lambda: reason_says("KubeRay has not reported its state yet"), what="the wait for KubeRay's status")
    custom.patch_namespaced_custom_object_status(RAY, RAY_VERSION, kube.ns, RAYCLUSTERS, "shared", {"status": {
        "state": "", "conditions": [condition("HeadPodReady", False, "HeadPodNotFound", "no head pod yet")]}})
    wait_for(lambda: reason_says("HeadPodReady is False: no head pod yet"), what="the wait for the head pod")
    assert not kube.pods("onray")

    # as KubeRay does once the head is up: the condition, the state, and the head Service it made
    custom.patch_namespaced_custom_object_status(RAY, RAY_VERSION, kube.ns, RAYCLUSTERS, "shared", {"status": {
        "state": "ready", "head": {"podIP": "10.1.2.3", "serviceName": "shared-head-svc", "podName": "shared-head-x"},
        "conditions": [condition("HeadPodReady", True, "HeadPodRunningAndReady"),
                       condition("RayClusterProvisioned", True, "AllPodRunningAndReadyFirstTime")]}})
    pod = wait_for(lambda: kube.pod("onray-head"), what="the job's pod once the RayCluster is ready")
    assert [p.metadata.name for p in kube.pods("onray")] == ["onray-head"]  # the RayCluster's nodes are its workers
    rft = next(c for c in pod.spec.containers if c.name == "rft")
    script = rft.command[2]
    assert "ray start --address=shared-head-svc:6379 --num-cpus=0 --num-gpus=0" in script
    assert "exec rft run --config /etc/rft/config.yaml" in script
    assert {e.name: e.value for e in rft.env}["RAY_ADDRESS"] == "shared-head-svc:6379"
    assert not kube.core.list_namespaced_service(kube.ns, label_selector="rft.dev/job=onray").items

    kube.set_phase("onray-head", "Running")
    running = kube.wait_phase("onray", "Running")
    assert "workflow runners on RayCluster shared" in running["message"]

    kube.delete("onray")
    wait_for(lambda: not kube.pods("onray"), what="the job's pod to be collected")
    cluster = custom.get_namespaced_custom_object(RAY, RAY_VERSION, kube.ns, RAYCLUSTERS, "shared")
    assert not cluster["metadata"].get("deletionTimestamp") and not cluster["metadata"].get("ownerReferences")
    assert cluster["spec"] == raycluster("shared")["spec"] | {"workerGroupSpecs": [
        {**raycluster("shared")["spec"]["workerGroupSpecs"][0], "numOfHosts": 1}]}
