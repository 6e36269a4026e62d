"""Operator upgrades and default changes never restart a running job nor re-run a finished one.

A job's pods and its status carry a digest of the spec; these tests play the release before (0.1.0, whose
digest covered the resolved image) and the current one, with the operator's default image changed between
them, and check that only a change the user made restarts anything.
"""

from __future__ import annotations

import copy

import pytest
import release_0_1_0
from rftjob_bodies import rftjob, seed

from rft_operator import builders, reconcile
from rft_operator.jobconfig import prepare_config
from rft_operator.podhash import legacy_digest, user_digest
from rft_operator.reconcile import Observed, plan_job
from rft_operator.spec import DEFAULT_IMAGE, parse_spec

T0 = 1_800_000_000.0
OLD_IMAGE, NEW_IMAGE = DEFAULT_IMAGE, "ghcr.io/rft-platform/rft-runtime:0.2.0"


class Cluster:
    """One job and its children, reconciled by whichever operator `operator` names."""

    def __init__(self, job):
        self.job = job
        self.objects = {"pods": {}, "configmaps": {}, "services": {}, "persistentvolumeclaims": {}}
        self.creates = self.deletes = 0
        self.events = []

    def step(self, now, default_image):
        spec = parse_spec(self.job["spec"], default_image)
        config = prepare_config(self.job["spec"]["config"], spec, job_name=self.job["metadata"]["name"],
                                namespace="default")
        observed = Observed(**{k: [copy.deepcopy(o) for o in v.values()] for k, v in self.objects.items()})
        plan = plan_job(self.job, spec, config, observed, now=now)
        self.job["status"] = plan.status
        for kind, name in plan.delete:
            self.deletes += kind == "pods"
            self.objects[kind].pop(name, None)
        for kind, body in plan.create:
            self.creates += kind == "pods"
            self.objects[kind].setdefault(body["metadata"]["name"], copy.deepcopy(body))
        for kind, name, body in plan.patch:
            self.objects[kind][name].update(body)
        self.events += [e[1] for e in plan.events]
        return plan

    def set_phase(self, phase, exit_code=None):
        for pod in self.objects["pods"].values():
            pod["status"] = {"phase": phase, "podIP": "10.0.0.9"}
            if exit_code is not None:
                pod["status"]["containerStatuses"] = [{"state": {"terminated": {"exitCode": exit_code}}}]


@pytest.fixture()
def old_release(monkeypatch):
    """The 0.1.0 operator: the same decisions, its digest of the resolved spec."""
    def play(cluster, now, default_image=OLD_IMAGE):
        with monkeypatch.context() as m:
            m.setattr(reconcile, "spec_hash", release_0_1_0.spec_hash)
            m.setattr(builders, "spec_hash", release_0_1_0.spec_hash)
            return cluster.step(now, default_image)
    return play


def run_until(cluster, phase, step, exit_code=None):
    cluster.set_phase(phase, exit_code)
    step(cluster, T0 + 1)
    assert cluster.job["status"]["phase"] == phase


JOBS = {
    "tinker": lambda: rftjob("up"),
    "verl": lambda: rftjob("upv", {**seed("verl-lora.yaml"), "cluster": {"node_num": 2, "gpu_per_node": 4}},
                           storage={"size": "1Gi"}, env=[{"name": "A", "value": "1"}]),
    "pinned-image": lambda: rftjob("upi", image="reg.local/rft:7"),
}


@pytest.mark.parametrize("kind", sorted(JOBS))
def test_legacy_digest_is_the_previous_release_digest(kind):
    job = JOBS[kind]()
    for image in (OLD_IMAGE, NEW_IMAGE):
        spec = parse_spec(job["spec"], image)
        config = prepare_config(job["spec"]["config"], spec, job_name="x", namespace="default")
        assert legacy_digest(spec, config.text, spec.image) == release_0_1_0.spec_hash(spec, config)


@pytest.mark.parametrize("kind", sorted(JOBS))
def test_a_running_job_of_the_previous_release_keeps_its_pods_under_a_new_default_image(kind, old_release):
    cluster = Cluster(JOBS[kind]())
    old_release(cluster, T0)
    run_until(cluster, "Running", old_release)
    pods = copy.deepcopy(cluster.objects["pods"])
    for i in range(3):
        plan = cluster.step(T0 + 10 + i, NEW_IMAGE)
        assert plan.create == [] and plan.delete == [], plan
    assert cluster.objects["pods"] == pods and cluster.job["status"]["phase"] == "Running"
    assert "SpecChanged" not in cluster.events
    # the status now holds the current digest, so later default changes are harmless too
    spec = parse_spec(cluster.job["spec"], NEW_IMAGE)
    config = prepare_config(cluster.job["spec"]["config"], spec, job_name="x", namespace="default")
    assert cluster.job["status"]["specHash"] == user_digest(cluster.job["spec"], config.source)
    cluster.step(T0 + 20, "another/image:3")
    assert cluster.creates == len(pods) and cluster.deletes == 0


@pytest.mark.parametrize("pods_kept", [True, False])
def test_a_finished_job_of_the_previous_release_does_not_run_again(pods_kept, old_release):
    cluster = Cluster(rftjob("fin"))
    old_release(cluster, T0)
    run_until(cluster, "Running", old_release)
    run_until(cluster, "Succeeded", old_release, exit_code=0)
    if not pods_kept:  # ttlSecondsAfterFinished removed them: only the status remembers the digest
        cluster.objects["pods"].clear()
    before = copy.deepcopy(cluster.job["status"])
    plan = cluster.step(T0 + 100, NEW_IMAGE)
    assert plan.create == [] and plan.delete == []
    assert cluster.job["status"]["phase"] == "Succeeded" and "SpecChanged" not in cluster.events
    assert cluster.job["status"]["completionTime"] == before["completionTime"]


def test_a_job_of_this_release_survives_any_default_image():
    cluster = Cluster(rftjob("cur"))
    cluster.step(T0, OLD_IMAGE)
    assert cluster.objects["pods"]["cur-head"]["spec"]["containers"][0]["image"] == OLD_IMAGE
    run_until(cluster, "Running", lambda c, now: c.step(now, OLD_IMAGE))
    for i, image in enumerate((NEW_IMAGE, "mirror.local/rft:9")):
        assert cluster.step(T0 + 10 + i, image).delete == []
    cluster.set_phase("Succeeded", 0)
    cluster.step(T0 + 20, NEW_IMAGE)
    plan = cluster.step(T0 + 30, "mirror.local/rft:10")
    assert cluster.job["status"]["phase"] == "Succeeded" and plan.create == [] and cluster.creates == 1


def test_the_new_default_reaches_a_job_when_its_pods_are_next_created():
    cluster = Cluster(rftjob("nxt", backoffLimit=2))
    cluster.step(T0, OLD_IMAGE)
    run_until(cluster, "Running", lambda c, now: c.step(now, OLD_IMAGE))
    cluster.set_phase("Failed", 1)
    cluster.step(T0 + 10, NEW_IMAGE)  # the retry deletes the failed pod
    cluster.step(T0 + 11, NEW_IMAGE)  # and creates the next attempt's
    assert cluster.objects["pods"]["nxt-head"]["spec"]["containers"][0]["image"] == NEW_IMAGE


def test_a_change_the_user_makes_still_restarts_after_the_upgrade(old_release):
    cluster = Cluster(rftjob("chg"))
    old_release(cluster, T0)
    run_until(cluster, "Running", old_release)
    cluster.job["spec"]["config"]["algorithm"]["optimizer"]["lr"] = 3e-6
    plan = cluster.step(T0 + 10, NEW_IMAGE)
    assert ("pods", "chg-head") in plan.delete and "SpecChanged" in cluster.events
    cluster.job["spec"]["image"] = "reg.local/rft:8"
    cluster.objects["pods"].clear()
    cluster.step(T0 + 11, NEW_IMAGE)
    assert cluster.objects["pods"]["chg-head"]["spec"]["containers"][0]["image"] == "reg.local/rft:8"


def test_the_digest_covers_the_spec_as_written_and_not_the_defaults():
    job = rftjob("d")
    spec = parse_spec(job["spec"])
    config = prepare_config(job["spec"]["config"], spec, job_name="d", namespace="default")
    base = user_digest(job["spec"], config.source)
    # spelling out nothing, or an empty value, asks for the same pods
    for same in ({"image": ""}, {"resources": {}}, {"env": []}, {"suspend": True}, {"backoffLimit": 9},
                 {"activeDeadlineSeconds": 5}, {"ttlSecondsAfterFinished": 1}, {"progressDeadlineSeconds": 60}):
        assert user_digest({**job["spec"], **same}, config.source) == base, same
    for other in ({"image": "x/y:1"}, {"resources": {"requests": {"cpu": "2"}}}, {"metrics": {"port": 9401}},
                  {"podTemplate": {"metadata": {"labels": {"team": "a"}}}}):
        assert user_digest({**job["spec"], **other}, config.source) != base, other
    # the config as the user wrote it, not the operator's copy with its own checkpoint root
    assert config.source == job["spec"]["config"] and config.text != ""


# ---- the real operator (kopf) against kmock, restarted with another default image


def _reconciles():
    from test_operator_kmock import scrape

    from rft_operator import handlers

    return scrape(handlers.STATE.metrics_port)[("rft_operator_reconciles_total", ())]


def _pod_deletions(api_server):
    return [r for r in list(api_server.emulator)
            if str(r.method).upper().endswith("DELETE") and "/pods/" in r.url.path]


@pytest.mark.parametrize("previous", ["0.1.0", "this release"])
def test_running_and_finished_jobs_survive_an_operator_restart_with_a_new_default_image(
        api_server, client, kubeconfig, operator_env, monkeypatch, previous):
    from kmock_harness import operator_process, wait_for
    from test_operator_kmock import status

    with monkeypatch.context() as m:
        if previous == "0.1.0":
            m.setattr(reconcile, "spec_hash", release_0_1_0.spec_hash)
            m.setattr(builders, "spec_hash", release_0_1_0.spec_hash)
        m.setenv("RFT_OPERATOR_DEFAULT_IMAGE", OLD_IMAGE)
        with operator_process():
            for name in ("run", "fin"):
                client.create("rftjobs", "default", rftjob(name))
            for name in ("run", "fin"):
                wait_for(lambda name=name: client.get("pods", "default", f"{name}-head"), 30, "the pod")
                client.set_pod_phase("default", f"{name}-head", "Running")
            wait_for(lambda: status(client, "fin").get("phase") == "Running", 30, "fin Running")
            client.set_pod_phase("default", "fin-head", "Succeeded", exit_code=0)
            wait_for(lambda: status(client, "fin").get("phase") == "Succeeded", 30, "fin Succeeded")
            wait_for(lambda: status(client, "run").get("phase") == "Running", 30, "run Running")
    before = {n: status(client, n) for n in ("run", "fin")}
    assert client.get("pods", "default", "run-head")["spec"]["containers"][0]["image"] == OLD_IMAGE

    for image in (NEW_IMAGE, "mirror.local/rft-runtime:9"):
        monkeypatch.setenv("RFT_OPERATOR_DEFAULT_IMAGE", image)
        with operator_process():
            wait_for(lambda: _reconciles() >= 6, 30, "three passes over both jobs")
        assert api_server.pod_creations() == 2 and _pod_deletions(api_server) == []
        for name in ("run", "fin"):
            now = status(client, name)
            assert now["phase"] == before[name]["phase"] and now["startTime"] == before[name]["startTime"]
            assert now.get("completionTime") == before[name].get("completionTime")
    events = {e["reason"] for e in client.list("events", "default")}
    assert "SpecChanged" not in events


def test_the_crd_defaults_nothing_in_spec():
    """The API server fills schema defaults into stored objects: a default added to the CRD in a later release
    would change every job's spec as read, hence its digest, and restart it. Defaults live in spec.py."""
    from rft_operator.crdgen import crd

    def defaults(node, path):
        if isinstance(node, dict):
            if "default" in node:
                yield path
            for key, value in node.items():
                yield from defaults(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from defaults(value, f"{path}[{i}]")

    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert list(defaults(spec, "spec")) == []
