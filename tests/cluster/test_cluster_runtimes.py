"""Platform runtimes (ClusterRFTRuntime) on a real API server: a job takes a runtime's values where its own
spec leaves them out, the default runtime serves jobs that name none, a job naming a runtime that does not
exist yet waits for it, and editing a runtime never restarts running pods."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cluster_harness import GROUP, PLURAL, RUNTIMES, VERSION, job, reconciles, table, wait_for

pytestmark = pytest.mark.cluster
DEFAULT = "rft.dev/default-runtime"


@pytest.fixture()
def runtimes(api_client: Any, crd_installed: None) -> Iterator[Callable[..., str]]:
    """make(spec, default=False) -> the name of a new ClusterRFTRuntime; all of them deleted at the end."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api_client)
    made: list[str] = []

    def make(spec: dict[str, Any], default: bool = False, name: str | None = None) -> str:
        name = name or f"rft-test-{uuid.uuid4().hex[:8]}"
        meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/part-of": "rft-tests"}}
        if default:
            meta["annotations"] = {DEFAULT: "true"}
        made.append(name)
        custom.create_cluster_custom_object(GROUP, VERSION, RUNTIMES, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterRFTRuntime", "metadata": meta, "spec": spec},
            field_validation="Strict")
        return name

    try:
        yield make
    finally:
        for name in made:
            try:
                custom.delete_cluster_custom_object(GROUP, VERSION, RUNTIMES, name)
            except Exception:  # deleted by the test itself
                pass


def operator_sees(check: Callable[[Any], bool]) -> None:
    """Wait until the operator (running in this process) has the runtimes `check` wants: its watch of them is
    a stream of its own, so a job created right after a change to a runtime may otherwise be seen first."""
    from rft_operator import handlers

    wait_for(lambda: check(handlers.STATE.runtimes), what="the operator to see the runtime's change")


def rft(pod: Any) -> Any:
    return next(c for c in pod.spec.containers if c.name == "rft")


def test_a_job_takes_its_runtimes_values_under_its_own_and_a_runtime_edit_restarts_nothing(
        kube, runtimes, running_operator):
    toleration = {"key": "dedicated", "operator": "Equal", "value": "rl", "effect": "NoSchedule"}
    platform = runtimes({
        "image": "registry.invalid/rft-runtime:platform-1",
        "nodeSelector": {"pool": "cpu", "zone": "a"},
        "tolerations": [toleration],
        "resources": {"requests": {"cpu": "2", "memory": "4Gi"}},
        "podTemplate": {"metadata": {"labels": {"team": "platform"}}},
        "kueue": {"queueName": "platform-queue"},
    })
    body = job("uses", runtimeRef={"name": platform}, nodeSelector={"pool": "big-cpu"},
               resources={"requests": {"memory": "8Gi"}})
    kube.create(body, strict=True)
    pod = wait_for(lambda: kube.pod("uses-head"), what="the pod")
    assert rft(pod).image == "registry.invalid/rft-runtime:platform-1"
    # maps merge key by key with the job's keys winning; the runtime's toleration stays
    assert pod.spec.node_selector == {"pool": "big-cpu", "zone": "a"}
    assert rft(pod).resources.requests == {"cpu": "2", "memory": "8Gi"}
    assert [(t.key, t.value, t.effect) for t in pod.spec.tolerations or [] if t.key == "dedicated"] == [
        ("dedicated", "rl", "NoSchedule")]
    assert pod.metadata.labels["team"] == "platform"
    assert pod.metadata.labels["kueue.x-k8s.io/queue-name"] == "platform-queue"
    status = wait_for(lambda: (lambda s: s if s.get("runtime") else None)(kube.status("uses")), what="status.runtime")
    assert status["runtime"] == platform
    row = table(kube.api, f"/apis/{GROUP}/{VERSION}/namespaces/{kube.ns}/{PLURAL}")["uses"]
    assert row["Runtime"] == platform

    kube.set_phase("uses-head", "Running")
    kube.wait_phase("uses", "Running")
    uid = pod.metadata.uid
    kube.custom.patch_cluster_custom_object(GROUP, VERSION, RUNTIMES, platform,
                                            {"spec": {"image": "registry.invalid/rft-runtime:platform-2"}})
    operator_sees(lambda s: s.get(platform).spec.get("image") == "registry.invalid/rft-runtime:platform-2")
    passes = reconciles()
    wait_for(lambda: reconciles() >= passes + 3, what="three passes after the runtime's edit")
    (still,) = kube.pods("uses")
    assert still.metadata.uid == uid and not still.metadata.deletion_timestamp
    assert rft(still).image == "registry.invalid/rft-runtime:platform-1"
    assert kube.status("uses")["phase"] == "Running" and not kube.events("uses", "SpecChanged")
    # a job created after the edit gets the new image
    kube.create(job("later", runtimeRef={"name": platform}))
    assert rft(wait_for(lambda: kube.pod("later-head"), what="the new job's pod")).image == \
        "registry.invalid/rft-runtime:platform-2"


def test_the_default_runtime_and_a_runtime_that_comes_later(kube, runtimes, running_operator):
    name = f"rft-test-{uuid.uuid4().hex[:8]}"
    kube.create(job("waits", runtimeRef={"name": name}))
    status = wait_for(lambda: (lambda s: s if s.get("reason") == "WaitingForRuntime" else None)(kube.status("waits")),
                      what="the job to wait for its runtime")
    assert status["phase"] == "Pending" and name in status["message"] and not kube.pods("waits")
    runtimes({"image": "registry.invalid/rft-runtime:named"}, name=name)
    assert rft(wait_for(lambda: kube.pod("waits-head"), what="the pod once the runtime exists")).image == \
        "registry.invalid/rft-runtime:named"

    default = runtimes({"image": "registry.invalid/rft-runtime:default", "gpus": {"resourceName": "amd.com/gpu"}},
                       default=True)
    operator_sees(lambda s: getattr(s.default(), "name", None) == default)
    kube.create(job("plain"))
    pod = wait_for(lambda: kube.pod("plain-head"), what="the pod of a job that names no runtime")
    assert rft(pod).image == "registry.invalid/rft-runtime:default"
    # a Tinker job is not refused for the runtime's GPU resource name: it is for veRL jobs
    assert wait_for(lambda: kube.status("plain").get("runtime")) == default
    assert kube.status("plain")["phase"] == "Pending"
    rows = table(kube.api, f"/apis/{GROUP}/{VERSION}/{RUNTIMES}")
    assert rows[default]["Default"] == "true" and rows[default]["Image"] == "registry.invalid/rft-runtime:default"
    assert rows[default]["GPU"] == "amd.com/gpu" and rows[name]["Default"] is None


def test_a_job_created_while_the_operator_was_down_gets_the_default_runtime_when_it_starts(kube, runtimes):
    """kopf lists every runtime before any job is reconciled: the first pass already knows the default."""
    from cluster_harness import operator_for

    default = runtimes({"image": "registry.invalid/rft-runtime:while-down"}, default=True)
    kube.create(job("early"))
    with operator_for(kube.ns):
        pod = wait_for(lambda: kube.pod("early-head"), what="the pod")
        assert rft(pod).image == "registry.invalid/rft-runtime:while-down"
        assert wait_for(lambda: kube.status("early").get("runtime")) == default
    # never once shown waiting for a runtime or without one
    assert not kube.events("early", "WaitingForRuntime")
