"""Each step of `reconcile.plan_job` on its own: given a pass, does it end it, and with what.

`test_reconcile.py` drives the whole chain through a job's life; these pin down what each step decides.
"""

from __future__ import annotations

import copy

import pytest
from rftjob_bodies import rftjob, seed
from test_reconcile import T0, World, started

from rft_operator import reconcile as rc
from rft_operator import status as st
from rft_operator.jobconfig import prepare_config
from rft_operator.reconcile import Observed, Waiting, begin, plan_job
from rft_operator.spec import parse_spec


def a_pass(job, observed=None, **kw):
    spec = parse_spec(job["spec"])
    config = kw.pop("config", prepare_config(job["spec"].get("config"), spec, job_name=job["metadata"]["name"],
                                            namespace="default"))
    return begin(job, spec, config, observed or Observed(), now=kw.pop("now", T0), **kw)


def pod(name, phase="Pending", **labels):
    return {"metadata": {"name": name, "labels": labels}, "status": {"phase": phase}}


# ---- held


def test_held_without_pods_is_pending_with_what_it_waits_for():
    p = a_pass(rftjob("h"), config=None, held=Waiting(st.WAITING_FOR_CONFIG_MAP, "waiting for ConfigMap x"))
    plan = rc.held(p)
    assert plan.status["phase"] == "Pending" and plan.status["reason"] == "WaitingForConfigMap"
    ready = next(c for c in plan.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "WaitingForConfigMap",
                                                                     "waiting for ConfigMap x")
    assert plan.create == [] and plan.delete == []
    assert plan.events == [("Warning", "WaitingForConfigMap", "Pending: waiting for ConfigMap x")]


def test_held_with_pods_leaves_them_and_the_status_as_they_are():
    job = rftjob("h")
    job["status"] = {"phase": "Running", "reason": "PodsRunning", "message": "1 pod(s) running"}
    p = a_pass(job, Observed(pods=[pod("h-head", "Running")]), config=None,
               held=Waiting(st.WAITING_FOR_RUNTIME, "ClusterRFTRuntime x does not exist"))
    plan = rc.held(p)
    assert plan.status == job["status"] and plan.delete == [] and plan.create == [] and plan.events == []


def test_held_after_the_end_stays_ended():
    job = rftjob("h")
    job["status"] = {"phase": "Failed", "reason": "BackoffLimitExceeded", "message": "m", "specHash": "x"}
    plan = rc.held(a_pass(job, config=None, held=Waiting(st.WAITING_FOR_CONFIG_MAP, "gone")))
    assert (plan.status["phase"], plan.status["reason"], plan.status["specHash"]) == (
        "Failed", "BackoffLimitExceeded", "x")


def test_nothing_held_goes_on():
    assert rc.held(a_pass(rftjob("h"))) is None


# ---- refused


def test_refused_config_fails_for_good_with_the_digest_of_what_was_refused():
    bad = seed("tinker.yaml")
    bad["algorithm"]["algorithm_type"] = "nope"
    p = a_pass(rftjob("r", bad), Observed(pods=[pod("r-head", "Running")]))
    plan = rc.refused(p)
    assert plan.status["phase"] == "Failed" and plan.status["reason"] == "InvalidConfig"
    assert plan.status["specHash"] == p.digest and plan.status["completionTime"]
    assert plan.delete == [("pods", "r-head")]
    assert plan.events[0][:2] == ("Warning", "InvalidConfig")
    assert plan.events[0][2].startswith("Failed: invalid spec.config: ")


def test_refused_once_is_not_refused_again_for_the_same_input():
    bad = seed("tinker.yaml")
    bad["algorithm"]["algorithm_type"] = "nope"
    job = rftjob("r", bad)
    first = rc.refused(a_pass(copy.deepcopy(job)))
    job["status"] = first.status
    assert rc.refused(a_pass(job)) is None  # finished_or_new_run keeps it


def test_a_new_invalid_input_with_the_same_reason_still_gets_an_event():
    job = rftjob("r", seed("tinker.yaml"), gpus={"perNode": 2})
    job["status"] = {"phase": "Failed", "reason": "InvalidSpec", "message": "invalid spec: old", "specHash": "old"}
    plan = rc.refused(a_pass(job))
    assert plan.status["reason"] == "InvalidSpec" and "spec.gpus applies to veRL jobs only" in plan.status["message"]
    assert [e[2] for e in plan.events if e[1] == "InvalidSpec"] == [
        f"spec changed, still invalid: {plan.status['message']}"]


def test_a_valid_input_is_not_refused():
    assert rc.refused(a_pass(rftjob("ok"))) is None


# ---- finished or new run


def test_finished_with_the_same_input_stays_and_a_changed_input_is_a_new_run():
    world = started(rftjob("f"))
    world.set_phase("f-head", "Succeeded", 0)
    world.step(T0 + 2)
    p = a_pass(world.job, world.observed(), now=T0 + 3)
    plan = rc.finished_or_new_run(p)
    assert plan.status["phase"] == "Succeeded" and plan.create == []
    changed = copy.deepcopy(world.job)
    changed["spec"]["config"]["buffer"]["batch_size"] = 48
    p = a_pass(changed, world.observed(), now=T0 + 4)
    assert rc.finished_or_new_run(p) is None
    assert p.new["retries"] == 0 and p.new["startTime"] is None
    assert p.plan.events == [("Normal", "SpecChanged", "spec changed after the job ended: starting a new run")]


def test_a_legacy_config_not_found_failure_is_not_final():
    job = rftjob("legacy")
    job["status"] = {"phase": "Failed", "reason": "ConfigNotFound", "message": "ConfigMap x key y not found"}
    p = a_pass(job)
    assert rc.finished_or_new_run(p) is None and p.plan.events == []
    plan = plan_job(job, p.spec, p.config, Observed(), now=T0)
    assert plan.status["phase"] == "Pending" and plan.create


# ---- children


def test_children_creates_what_is_missing_and_patches_a_changed_config():
    world = World(rftjob("c", storage={"size": "1Gi"}))
    p = a_pass(world.job)
    rc.children(p)
    assert sorted(k for k, _ in p.plan.create) == ["configmaps", "persistentvolumeclaims"]
    world.step(T0)
    changed = copy.deepcopy(world.job)
    changed["spec"]["config"]["buffer"]["batch_size"] = 48
    p = a_pass(changed, world.observed())
    rc.children(p)
    assert p.plan.create == [] and [(k, n) for k, n, _ in p.plan.patch] == [("configmaps", "c-config")]


# ---- stale pods


def test_stale_pods_go_and_an_image_only_change_says_so():
    world = started(rftjob("s", image="reg/rft:1"))
    changed = copy.deepcopy(world.job)
    changed["spec"]["image"] = "reg/rft:2"
    p = a_pass(changed, world.observed())
    rc.children(p)
    rc.stale_pods(p)
    assert p.plan.delete == [("pods", "s-head")] and p.current == {}
    assert p.plan.events == [("Normal", "SpecChanged",
                              "spec.image changed from reg/rft:1 to reg/rft:2: restarting the pods with the new image")]


@pytest.mark.parametrize("change, says", [
    (lambda s: s["config"]["buffer"].update(batch_size=48), "the config changed: restarting the pods with the new config"),
    (lambda s: s.update(resources={"requests": {"cpu": "3"}}), "spec changed: restarting the pods with the new pod spec"),
])
def test_stale_pods_name_what_changed(change, says):
    world = started(rftjob("s"))
    changed = copy.deepcopy(world.job)
    change(changed["spec"])
    p = a_pass(changed, world.observed())
    rc.children(p)
    rc.stale_pods(p)
    assert [e[2] for e in p.plan.events] == [says]


def test_current_pods_stay():
    world = started(rftjob("s"))
    p = a_pass(world.job, world.observed())
    rc.children(p)
    rc.stale_pods(p)
    assert p.plan.delete == [] and list(p.current) == ["s-head"]


# ---- suspended


def test_suspended_removes_the_pods_and_keeps_the_rest():
    world = started(rftjob("z"))
    job = copy.deepcopy(world.job)
    job["spec"]["suspend"] = True
    p = a_pass(job, world.observed())
    rc.children(p)
    rc.stale_pods(p)
    plan = rc.suspended(p)
    assert plan.status["phase"] == "Suspended" and plan.delete == [("pods", "z-head")]
    assert "startTime" not in plan.status


# ---- waiting


def test_waiting_holds_pod_creation_until_the_dependency_is_ready():
    p = a_pass(rftjob("w", rayClusterRef={"name": "rc"}),
               waiting=Waiting(st.WAITING_FOR_RAY_CLUSTER, "waiting for RayCluster rc to be ready: ..."))
    rc.children(p)
    rc.stale_pods(p)
    plan = rc.waiting(p)
    assert plan.status["phase"] == "Pending" and plan.status["reason"] == "WaitingForRayCluster"
    assert not [k for k, _ in plan.create if k == "pods"]
    assert plan.events[0][0] == "Normal"  # it may well come: not a warning


def test_waiting_leaves_a_running_pod_alone():
    world = started(rftjob("w", rayClusterRef={"name": "rc"}))
    p = a_pass(world.job, world.observed(), waiting=Waiting(st.WAITING_FOR_RAY_CLUSTER, "not ready"))
    rc.children(p)
    rc.stale_pods(p)
    assert rc.waiting(p) is None


# ---- pod outcome


def test_a_new_jobs_status_already_says_its_pods_are_pending():
    p = a_pass(rftjob("o"))
    rc.children(p)
    rc.stale_pods(p)
    plan = rc.pod_outcome(p)
    assert [k for k, _ in plan.create].count("pods") == 1
    # the status is written after the creates, so it says what they made
    assert (plan.status["phase"], plan.status["reason"]) == ("Pending", "PodsPending")
    assert plan.events == [("Normal", "PodsPending", "Pending: waiting for 1 pod(s) to run")]


def test_a_pod_waiting_for_its_secret_makes_the_job_wait_for_it():
    world = started(rftjob("sec"), running=False)
    world.objects["pods"]["sec-head"]["status"] = {"phase": "Pending", "containerStatuses": [{"name": "rft", "state": {
        "waiting": {"reason": "CreateContainerConfigError", "message": 'secret "tinker-api-key" not found'}}}]}
    plan = world.step(T0 + 1)
    assert plan.status["reason"] == "WaitingForSecret" and 'secret "tinker-api-key" not found' in plan.status["message"]
    assert plan.events == [("Warning", "WaitingForSecret", "Pending: PodsPending -> WaitingForSecret: sec-head: "
                            'CreateContainerConfigError: secret "tinker-api-key" not found')]


def test_no_event_ever_names_a_transition_from_a_phase_to_itself():
    world = World(rftjob("e"))
    world.step(T0)
    world.objects["pods"]["e-head"]["status"] = {"phase": "Pending", "containerStatuses": [
        {"name": "rft", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}]}
    world.step(T0 + 1)
    world.set_phase("e-head", "Running")
    world.step(T0 + 2)
    messages = [m for _, _, m in world.events]
    assert messages and not [m for m in messages if m.split(":")[0] in ("Pending -> Pending", "Running -> Running")]
    assert "Pending -> Running: 1 pod(s) running" in messages


def test_the_steps_run_in_the_documented_order():
    assert [s.__name__ for s in rc.STEPS] + ["pod_outcome"] == [
        "held", "refused", "finished_or_new_run", "children", "stale_pods", "suspended", "waiting", "pod_outcome"]


def test_held_a_head_that_succeeded_still_ends_the_job_and_a_failed_one_waits_for_the_input():
    job = rftjob("h")
    job["status"] = {"phase": "Running", "reason": "PodsRunning", "message": "1 pod(s) running"}
    done = pod("h-head", "Succeeded")
    plan = rc.held(a_pass(job, Observed(pods=[done]), config=None,
                          held=Waiting(st.WAITING_FOR_CONFIG_MAP, "waiting for ConfigMap x")))
    assert (plan.status["phase"], plan.status["reason"]) == ("Succeeded", "Completed")
    broken = pod("h-head", "Failed")
    broken["status"]["containerStatuses"] = [{"name": "rft", "state": {"terminated": {"exitCode": 1,
                                                                                       "reason": "Error"}}}]
    plan = rc.held(a_pass(job, Observed(pods=[broken]), config=None,
                          held=Waiting(st.WAITING_FOR_CONFIG_MAP, "waiting for ConfigMap x")))
    assert (plan.status["phase"], plan.status["reason"]) == ("Pending", "WaitingForConfigMap")
    assert plan.status["message"] == ("pod h-head failed: exit code 1 (Error); the next attempt is waiting for "
                                      "ConfigMap x")
    assert plan.delete == []  # the failed pod stays until the input comes and the retry is decided
