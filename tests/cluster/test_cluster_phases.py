"""Honest phases and events on a real API server: a job waiting for something that may still come is Pending
and says what it waits for, Failed stays Failed, events name real transitions, and deleting a job or its
namespace never waits for the operator.

Pods are kept off every node and the tests play the kubelet by writing pods' status.
"""

from __future__ import annotations

import re
import threading
import uuid

import pytest
import yaml
from cluster_harness import GROUP, PLURAL, VERSION, Kube, job, operator_for, reconciles, wait_for

pytestmark = pytest.mark.cluster


class PhaseWatch:
    """Every phase an RFTJob shows, from a watch (so a phase held for a moment is not missed)."""

    def __init__(self, kube: Kube, name: str):
        self.kube, self.name = kube, name
        self.phases: list[tuple[str | None, str | None]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from kubernetes import watch

        while not self._stop.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(self.kube.custom.list_namespaced_custom_object, GROUP, VERSION,
                                           self.kube.ns, PLURAL, field_selector=f"metadata.name={self.name}",
                                           timeout_seconds=5):
                    status = event["object"].get("status") or {}
                    seen = (status.get("phase"), status.get("reason"))
                    if not self.phases or self.phases[-1] != seen:
                        self.phases.append(seen)
                    if self._stop.is_set():
                        break
            except Exception:  # the watch ends with the namespace; a dropped one starts again
                if self._stop.wait(0.5):
                    return
            finally:
                stream.stop()

    def stop(self) -> list[tuple[str | None, str | None]]:
        self._stop.set()
        self.thread.join(15)
        return self.phases


def test_a_configmap_created_after_its_job_makes_it_run_and_it_is_never_failed(kube, running_operator):
    body = job("late", configFrom={"configMapKeyRef": {"name": "late-config", "key": "job.yaml"}})
    config = body["spec"].pop("config")
    watch = PhaseWatch(kube, "late")
    try:
        kube.create(body)
        status = wait_for(lambda: (lambda s: s if s.get("reason") == "WaitingForConfigMap" else None)(
            kube.status("late")), what="the job to wait for its ConfigMap")
        assert status["phase"] == "Pending" and "late-config" in status["message"]
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "False" and ready["reason"] == "WaitingForConfigMap"
        assert not kube.pods("late")
        # the ConfigMap comes, without its key first: still waiting, now for the key
        kube.core.create_namespaced_config_map(kube.ns, {"metadata": {"name": "late-config"}, "data": {}})
        wait_for(lambda: "key job.yaml" in kube.status("late").get("message", ""), what="the wait for the key")
        kube.core.patch_namespaced_config_map("late-config", kube.ns, {"data": {"job.yaml": yaml.safe_dump(config)}})
        wait_for(lambda: kube.pod("late-head"), what="the pod once the config came")
        kube.set_phase("late-head", "Running")
        kube.wait_phase("late", "Running")
    finally:
        phases = watch.stop()
    assert ("Failed", "ConfigNotFound") not in phases and not [p for p in phases if p[0] == "Failed"], phases
    assert phases[0] == (None, None) or phases[0][0] == "Pending"
    assert ("Pending", "WaitingForConfigMap") in phases and phases[-1] == ("Running", "PodsRunning"), phases
    # events follow the status write that they report
    events = wait_for(lambda: (lambda found: found if "PodsRunning" in found else None)(
        {e.reason: e for e in kube.events("late")}), what="the event of the transition to Running")
    assert events["WaitingForConfigMap"].message.startswith("Pending: waiting for ConfigMap late-config")
    assert events["PodsRunning"].message.startswith("Pending -> Running: 1 pod(s) running")


def test_a_failed_job_stays_failed_until_its_spec_changes_and_events_say_what_changed(kube, running_operator):
    bad = job("bad")
    bad["spec"]["config"]["algorithm"]["algorithm_type"] = "no-such-algorithm"
    kube.create(bad)
    failed = kube.wait_phase("bad", "Failed")
    assert failed["reason"] == "InvalidConfig" and "algorithm" in failed["message"]
    # several passes later (resync every 2 s): still the same Failed, nothing written again
    version = kube.get("bad")["metadata"]["resourceVersion"]
    passes = reconciles()
    wait_for(lambda: reconciles() >= passes + 3, what="three more passes")
    assert kube.get("bad")["metadata"]["resourceVersion"] == version
    (event,) = kube.events("bad", "InvalidConfig")
    assert event.type == "Warning" and event.message.startswith("Failed: invalid spec.config")
    # fixing the spec is a new run
    kube.patch("bad", {"spec": {"config": {"algorithm": {"algorithm_type": "grpo"}}}})
    wait_for(lambda: kube.pod("bad-head"), what="the pod of the fixed job")
    kube.wait_phase("bad", "Pending")
    transitions = wait_for(lambda: [e.message for e in kube.events("bad", "PodsPending")],
                           what="the event of the new run's transition")
    assert transitions[0].startswith("Failed -> Pending: waiting for 1 pod(s) to run")
    assert [e.message for e in kube.events("bad", "SpecChanged")] == [
        "spec changed after the job ended: starting a new run"]
    # no event names a transition from a phase to itself ("Pending -> Pending")
    assert not [e.message for e in kube.events("bad") if re.match(r"^(\w+) -> \1\b", e.message)]

    # an image-only change of a running job says so
    kube.set_phase("bad-head", "Running")
    kube.wait_phase("bad", "Running")
    uid = kube.pod("bad-head").metadata.uid
    kube.patch("bad", {"spec": {"image": "registry.invalid/rft-runtime:9"}})
    wait_for(lambda: [p for p in kube.pods("bad") if p.metadata.uid != uid], what="the new pod")
    (changed,) = wait_for(lambda: [e for e in kube.events("bad", "SpecChanged") if "image" in e.message],
                          what="the event of the image change")
    assert changed.message.endswith("to registry.invalid/rft-runtime:9: restarting the pods with the new image")
    assert "spec.image changed from" in changed.message


def test_a_missing_api_key_secret_is_waited_for(kube, running_operator):
    kube.create(job("nokey"))
    wait_for(lambda: kube.pod("nokey-head"), what="the pod")
    # what the kubelet reports for a Secret that does not exist yet
    kube.set_phase("nokey-head", "Pending", containerStatuses=[{
        "name": "rft", "image": "x", "imageID": "", "ready": False, "restartCount": 0,
        "state": {"waiting": {"reason": "CreateContainerConfigError",
                              "message": 'secret "tinker-api-key" not found'}}}])
    status = wait_for(lambda: (lambda s: s if s.get("reason") == "WaitingForSecret" else None)(kube.status("nokey")),
                      what="WaitingForSecret")
    assert status["phase"] == "Pending" and 'secret "tinker-api-key" not found' in status["message"]


def test_jobs_and_their_namespace_are_deleted_with_the_operator_stopped(api_client, crd_installed):
    """No finalizer holds them: the garbage collector and the namespace controller need no operator."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    ns = f"rft-test-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": ns, "labels": {"app.kubernetes.io/part-of": "rft-tests"}}})
    kube = Kube(api_client, ns)
    try:
        with operator_for(ns):
            for name in ("one", "two"):
                kube.create(job(name))
            for name in ("one", "two"):
                wait_for(lambda name=name: kube.pod(f"{name}-head"), what=f"{name}'s pod")
                wait_for(lambda name=name: kube.status(name).get("phase"), what=f"{name}'s status")
        assert not kube.get("one")["metadata"].get("finalizers")
        kube.delete("one")
        wait_for(lambda: not [j for j in kube.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
                              ["items"] if j["metadata"]["name"] == "one"], what="job one to be gone")
        wait_for(lambda: not kube.pods("one"), what="job one's pod to be collected")
        core.delete_namespace(ns)

        def gone() -> bool:
            from kubernetes.client.exceptions import ApiException

            try:
                core.read_namespace(ns)
            except ApiException as exc:
                return exc.status == 404
            return False

        wait_for(gone, 120, "the namespace to be deleted with job two in it")
    finally:
        try:
            core.delete_namespace(ns)
        except Exception:  # deleted above
            pass


def test_the_finalizer_an_earlier_release_put_on_a_job_is_removed(kube):
    from rft_operator.controller import LEGACY_FINALIZER

    body = job("old")
    body["metadata"]["finalizers"] = [LEGACY_FINALIZER, "example.com/someone-elses"]
    kube.create(body)
    with operator_for(kube.ns):
        wait_for(lambda: kube.get("old")["metadata"].get("finalizers") == ["example.com/someone-elses"],
                 what="the earlier release's finalizer to go, and only that one")
    kube.patch("old", {"metadata": {"finalizers": None}})
