"""Every lifecycle case of the pure decision function, driven step by step like a cluster would."""

from __future__ import annotations

import copy

import yaml
from rftjob_bodies import rftjob, seed

from rft_operator.jobconfig import prepare_config
from rft_operator.reconcile import Observed, plan_job, status_patch
from rft_operator.spec import parse_spec
from rft_operator.status import timestamp

T0 = 1_800_000_000.0


class World:
    """The job and its children as a cluster would hold them; `step` runs one reconcile and applies it."""

    def __init__(self, job):
        self.job = job
        self.objects = {"pods": {}, "configmaps": {}, "services": {}, "persistentvolumeclaims": {}}
        self.events = []
        self.pod_creates = 0
        self.uids = 0

    def observed(self):
        return Observed(**{k: [copy.deepcopy(o) for o in v.values()] for k, v in self.objects.items()})

    def plan(self, now, progress=None, stall_after=None):
        spec = parse_spec(self.job["spec"])
        config = prepare_config(self.job["spec"].get("config"), spec, job_name=self.job["metadata"]["name"],
                                namespace="default")
        return plan_job(self.job, spec, config, self.observed(), now=now, progress=progress,
                        stall_after=stall_after)

    def step(self, now, **kw):
        plan = self.plan(now, **kw)
        self.job["status"] = plan.status
        for kind, name in plan.delete:
            self.objects[kind].pop(name, None)
        for kind, body in plan.create:
            # the server gives every object a uid: a re-created pod is told apart by it
            self.uids += 1
            body = copy.deepcopy(body)
            body["metadata"]["uid"] = f"uid-{self.uids}"
            self.objects[kind].setdefault(body["metadata"]["name"], body)
            self.pod_creates += kind == "pods"
        for kind, name, body in plan.patch:
            self.objects[kind][name].update(body)
        self.events += plan.events
        return plan

    def set_phase(self, name, phase, exit_code=None, finished=None):
        status = {"phase": phase, "podIP": "10.0.0.9"}
        if exit_code is not None:
            term = {"exitCode": exit_code, "reason": "Error"}
            if finished is not None:
                term["finishedAt"] = timestamp(finished)
            status["containerStatuses"] = [{"name": "rft", "state": {"terminated": term}}]
        self.objects["pods"][name]["status"] = status

    def uid_of(self, name):
        return self.objects["pods"][name]["metadata"]["uid"]

    @property
    def status(self):
        return self.job["status"]

    def cond(self, ctype):
        return next(c for c in self.job["status"]["conditions"] if c["type"] == ctype)

    @property
    def phase(self):
        return self.job["status"]["phase"]


def started(job, running=True):
    world = World(job)
    world.step(T0)
    if running:
        for name in world.objects["pods"]:
            world.set_phase(name, "Running")
        world.step(T0 + 1)
    return world


def test_a_new_job_gets_its_configmap_and_pod_and_is_pending_until_the_pod_runs():
    world = World(rftjob("j"))
    plan = world.step(T0)
    assert sorted(world.objects["pods"]) == ["j-head"] and sorted(world.objects["configmaps"]) == ["j-config"]
    assert world.phase == "Pending" and world.cond("Ready")["status"] == "False"
    assert world.job["status"]["startTime"] and world.job["status"]["backend"] == "tinker"
    assert plan.events and plan.events[0][0] == "Normal"
    world.set_phase("j-head", "Running")
    world.step(T0 + 5)
    assert world.phase == "Running" and world.cond("Ready")["status"] == "True"
    assert world.cond("Ready")["lastTransitionTime"] == "2027-01-15T08:00:05Z"


def test_replayed_events_and_restarts_create_nothing_twice_and_write_nothing_new():
    world = started(rftjob("idem"))
    before = copy.deepcopy(world.job["status"])
    for i in range(3):
        plan = world.plan(T0 + 2 + i)
        assert plan.create == [] and plan.delete == [] and plan.patch == []
        assert status_patch(before, plan.status) is None and plan.events == []
    assert world.pod_creates == 1


def test_pending_pods_explain_themselves():
    world = started(rftjob("pull"), running=False)
    world.objects["pods"]["pull-head"]["status"] = {"phase": "Pending", "containerStatuses": [
        {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}]}
    world.step(T0 + 3)
    assert world.phase == "Pending" and world.job["status"]["reason"] == "PodsPending"
    assert "ImagePullBackOff" in world.job["status"]["message"]


def test_success_completes_the_job_and_it_stays_complete():
    world = started(rftjob("ok"))
    world.set_phase("ok-head", "Succeeded", 0)
    world.step(T0 + 60)
    assert world.phase == "Succeeded" and world.cond("Complete")["status"] == "True"
    assert world.cond("Ready")["status"] == "True" and world.job["status"]["completionTime"]
    assert ("Normal", "Completed") in [(e[0], e[1]) for e in world.events]
    world.step(T0 + 120)
    assert world.phase == "Succeeded" and "ok-head" in world.objects["pods"]  # kept for its logs


def test_verl_success_stops_the_workers_but_keeps_the_head():
    config = seed("verl-lora.yaml")
    config["cluster"] = {"node_num": 2, "gpu_per_node": 8}
    world = started(rftjob("v", config))
    assert sorted(world.objects["pods"]) == ["v-head", "v-worker-1"] and "v-head" in world.objects["services"]
    world.set_phase("v-head", "Succeeded", 0)
    world.step(T0 + 60)
    assert world.phase == "Succeeded" and sorted(world.objects["pods"]) == ["v-head"]


def test_a_failed_pod_is_replaced_until_backoff_limit_then_the_job_fails():
    world = started(rftjob("retry", backoffLimit=2))
    for attempt in (1, 2):
        world.set_phase("retry-head", "Failed", 1)
        world.step(T0 + 10 * attempt)
        assert world.phase == "Pending" and world.job["status"]["reason"] == "Retrying"
        assert world.job["status"]["retries"] == attempt and world.objects["pods"] == {}
        assert "exit code 1" in world.job["status"]["message"]
        world.step(T0 + 10 * attempt + 1)
        pod = world.objects["pods"]["retry-head"]
        assert pod["metadata"]["labels"]["rft.dev/attempt"] == str(attempt)
        assert world.job["status"]["reason"] == "Retrying"
        world.set_phase("retry-head", "Running")
        world.step(T0 + 10 * attempt + 2)
        assert world.phase == "Running"
    world.set_phase("retry-head", "Failed", 137)
    world.step(T0 + 50)
    assert world.phase == "Failed" and world.job["status"]["reason"] == "BackoffLimitExceeded"
    assert world.cond("Failed")["status"] == "True" and world.cond("Ready")["status"] == "False"
    assert world.pod_creates == 3
    assert ("Warning", "BackoffLimitExceeded") in [(e[0], e[1]) for e in world.events]


def test_a_retry_is_counted_once_even_if_the_failed_pod_is_seen_again():
    world = started(rftjob("once"))
    world.set_phase("once-head", "Failed", 1)
    plan = world.plan(T0 + 10)
    # the status write landed but the operator died before deleting the pod: the next pass sees it again
    world.job["status"] = plan.status
    again = world.plan(T0 + 11)
    assert again.status["retries"] == 1 and ("pods", "once-head") in again.delete


def test_invalid_config_fails_with_the_messages_and_creates_nothing():
    config = seed("tinker.yaml")
    config["buffer"]["batch_size"] = 0
    config["algorithm"]["algorithm_typo"] = "grpo"
    world = World(rftjob("bad", config))
    plan = world.step(T0)
    assert plan.create == [] and world.phase == "Failed"
    status = world.job["status"]
    assert status["reason"] == "InvalidConfig"
    assert "buffer.batch_size" in status["message"] and "algorithm_typo" in status["message"]
    assert world.cond("Failed")["reason"] == "InvalidConfig"
    assert [(e[0], e[1]) for e in plan.events] == [("Warning", "InvalidConfig")]
    # fixing the config starts the job
    world.job["spec"]["config"] = seed("tinker.yaml")
    world.step(T0 + 5)
    assert world.phase == "Pending" and "bad-head" in world.objects["pods"]


def test_suspend_removes_pods_keeps_storage_and_resume_starts_again():
    world = started(rftjob("sus", storage={"size": "1Gi"}))
    world.job["spec"]["suspend"] = True
    world.step(T0 + 10)
    assert world.phase == "Suspended" and world.objects["pods"] == {}
    assert "sus-storage" in world.objects["persistentvolumeclaims"] and "sus-config" in world.objects["configmaps"]
    assert world.cond("Suspended")["status"] == "True"
    world.job["spec"]["suspend"] = False
    world.step(T0 + 20)
    assert world.phase == "Pending" and "sus-head" in world.objects["pods"]
    assert world.cond("Suspended")["status"] == "False"
    world.set_phase("sus-head", "Running")
    world.step(T0 + 21)
    assert world.phase == "Running"


def test_active_deadline_fails_the_job_with_a_reason():
    world = started(rftjob("late", activeDeadlineSeconds=100))
    assert world.plan(T0 + 50).requeue_after is not None
    world.step(T0 + 101)
    assert world.phase == "Failed" and world.job["status"]["reason"] == "DeadlineExceeded"
    assert world.objects["pods"] == {}


def test_ttl_after_finished_removes_children_but_never_the_job():
    world = started(rftjob("ttl", ttlSecondsAfterFinished=30, storage={"size": "1Gi"}))
    world.set_phase("ttl-head", "Succeeded", 0)
    world.step(T0 + 10)
    plan = world.step(T0 + 20)
    assert plan.requeue_after is not None and plan.requeue_after <= 30
    world.step(T0 + 41)
    assert world.objects["pods"] == {} and world.objects["configmaps"] == {}
    assert "ttl-storage" in world.objects["persistentvolumeclaims"]
    assert world.phase == "Succeeded" and world.job["status"]["cleanedUp"] is True
    assert world.step(T0 + 50).create == []


def test_a_spec_change_while_running_restarts_the_pods_with_the_new_config():
    world = started(rftjob("chg"))
    old_hash = world.objects["pods"]["chg-head"]["metadata"]["labels"]["rft.dev/spec-hash"]
    world.job["spec"]["config"]["algorithm"]["optimizer"]["lr"] = 3e-5
    plan = world.step(T0 + 10)
    assert ("pods", "chg-head") in plan.delete and ("configmaps", "chg-config", ) == plan.patch[0][:2]
    assert "SpecChanged" in [e[1] for e in plan.events]
    world.step(T0 + 11)
    new_pod = world.objects["pods"]["chg-head"]
    assert new_pod["metadata"]["labels"]["rft.dev/spec-hash"] != old_hash
    shipped = yaml.safe_load(world.objects["configmaps"]["chg-config"]["data"]["config.yaml"])
    assert shipped["algorithm"]["optimizer"]["lr"] == 3e-5


def test_a_spec_change_after_the_end_starts_a_new_run():
    world = started(rftjob("again", backoffLimit=0))
    world.set_phase("again-head", "Failed", 1)
    world.step(T0 + 10)
    assert world.phase == "Failed"
    world.job["spec"]["config"]["buffer"]["batch_size"] = 32
    world.step(T0 + 20)
    world.step(T0 + 21)
    assert world.phase == "Pending" and world.job["status"].get("completionTime") is None
    assert world.objects["pods"]["again-head"].get("status") is None


def test_progress_lands_in_status_and_a_stall_sets_the_condition():
    world = started(rftjob("prog"))
    progress = {"step": 3, "totalSteps": 10, "rewardMean": 0.5, "loss": 0.1,
                "lastUpdateTime": "2027-01-15T08:00:10Z"}
    world.step(T0 + 12, progress=progress, stall_after=60)
    assert world.job["status"]["progress"] == progress
    assert world.cond("Stalled")["status"] == "False"
    world.step(T0 + 100, stall_after=60)
    stalled = world.cond("Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "NoProgress" and "last step 3" in stalled["message"]
    assert ("Warning", "NoProgress") in [(e[0], e[1]) for e in world.events]
    world.job["spec"]["progressDeadlineSeconds"] = 1000
    world.step(T0 + 101)
    assert world.cond("Stalled")["status"] == "False"


def test_status_never_touches_spec_and_the_patch_holds_only_changes():
    world = started(rftjob("st"))
    spec_before = copy.deepcopy(world.job["spec"])
    old = copy.deepcopy(world.job["status"])
    world.set_phase("st-head", "Succeeded", 0)
    plan = world.plan(T0 + 30)
    patch = status_patch(old, plan.status)
    assert patch["phase"] == "Succeeded" and "backend" not in patch
    assert world.job["spec"] == spec_before


def test_without_a_metrics_endpoint_a_long_run_is_never_called_stalled():
    world = started(rftjob("quiet", metrics={"enabled": False}))
    world.step(T0 + 10_000, stall_after=60)
    assert world.phase == "Running" and world.cond("Stalled")["status"] == "False"
    assert "--no-metrics" in world.objects["pods"]["quiet-head"]["spec"]["containers"][0]["command"]


def test_a_key_pasted_into_the_config_never_reaches_status_or_events(monkeypatch):
    monkeypatch.setenv("TINKER_API_KEY", "tml-pasted-by-mistake-0123")
    config = seed("tinker.yaml")
    config["buffer"]["batch_size"] = "tml-pasted-by-mistake-0123"
    world = World(rftjob("leak", config))
    plan = world.step(T0)
    assert world.phase == "Failed" and "buffer.batch_size" in world.job["status"]["message"]
    assert "tml-pasted-by-mistake-0123" not in str(world.job["status"]) + str(plan.events)


def test_a_failed_job_reads_as_failed_to_kstatus():
    world = started(rftjob("ks", backoffLimit=0))
    world.set_phase("ks-head", "Failed", 3)
    plan = world.step(T0 + 5)
    stalled = world.cond("Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "BackoffLimitExceeded"
    assert world.cond("Ready")["status"] == "False"
    assert [e[1] for e in plan.events] == ["BackoffLimitExceeded"]  # one event, not a second one for Stalled


def test_the_status_patch_removes_what_disappeared_at_any_depth():
    old = {"phase": "Running", "progress": {"step": 3, "rewardMean": 0.5}, "completionTime": "x"}
    new = {"phase": "Running", "progress": {"step": 4}}
    assert status_patch(old, new) == {"progress": {"step": 4, "rewardMean": None}, "completionTime": None}
    assert status_patch(new, new) is None
