"""Multi-node Tinker jobs (cluster.node_num > 1): a Ray head pod and CPU worker pods, workers replaced alone.

The pure half: what pods the job gets (builders) and what the operator decides as their phases change
(reconcile), driven step by step like a cluster would; the kmock and real-cluster tests drive the operator.
"""

from __future__ import annotations

import os
import subprocess

import kubernetes_validate
import pytest
from rftjob_bodies import example, rftjob, seed
from test_reconcile import T0, World

from rft_operator.builders import NO_RAY_TINKER, NO_TRINITY_WORKER, build_pods, desired_children, spec_issues
from rft_operator.jobconfig import prepare_config
from rft_operator.reconcile import worker_backoff
from rft_operator.spec import parse_spec
from rft_operator.status import timestamp


def tinker_config(nodes):
    config = seed("tinker.yaml")
    config["cluster"] = {"node_num": nodes}
    return config


def shaped(job):
    spec = parse_spec(job["spec"])
    config = prepare_config(job["spec"]["config"], spec, job_name=job["metadata"]["name"], namespace="default")
    assert config.valid, config.issues
    return spec, config


def children(job):
    spec, config = shaped(job)
    assert spec_issues(job, spec, config) == []
    return desired_children(job, spec, config, attempt=0, with_pods=True)


def runtime(pod):
    return next(c for c in pod["spec"]["containers"] if c["name"] == "rft")


def env_of(pod):
    return {e["name"]: e.get("value") for e in runtime(pod)["env"]}


def test_node_num_3_is_a_ray_head_and_two_cpu_workers_joining_it_over_the_head_service():
    job = rftjob("mt", tinker_config(3), storage={"size": "1Gi"}, resources={"requests": {"cpu": "4"}},
                 tinker={"apiKeySecretRef": {"name": "tinker"}})
    out = children(job)
    head, *workers = out["pods"]
    assert [p["metadata"]["name"] for p in out["pods"]] == ["mt-head", "mt-worker-1", "mt-worker-2"]
    assert [p["metadata"]["labels"]["rft.dev/role"] for p in out["pods"]] == ["head", "worker", "worker"]
    for pod in out["pods"]:
        # no GPU anywhere: not asked for, and Ray told there is none
        assert "gpu" not in str(runtime(pod)["resources"]).lower()
        assert "--num-gpus=0" in runtime(pod)["command"][2]
        assert runtime(pod)["resources"] == {"requests": {"cpu": "4"}}
        kubernetes_validate.validate(pod, "1.30", strict=True)
    script = runtime(head)["command"][2]
    assert "ray start --head --port=6379" in script and script.endswith(
        "&& exec rft run --config /etc/rft/config.yaml --no-progress --metrics-port 9400")
    assert env_of(head)["RAY_ADDRESS"] == "127.0.0.1:6379"
    assert {p["name"]: p["containerPort"] for p in runtime(head)["ports"]} == {
        "metrics": 9400, "gcs": 6379, "dashboard": 8265}
    for pod in workers:
        assert "until ray start --address=mt-head:6379" in runtime(pod)["command"][2]
        assert "--block" in runtime(pod)["command"][2] and "rft run" not in runtime(pod)["command"][2]
        assert env_of(pod)["RAY_ADDRESS"] == "mt-head:6379"
        # a ReadWriteOnce claim on pods of several nodes would keep them Pending: workers keep nothing
        assert {"name": "job-dir", "emptyDir": {}} in pod["spec"]["volumes"]
        assert "ports" not in runtime(pod)
    claims = [v["persistentVolumeClaim"]["claimName"] for v in head["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["mt-storage"]
    (svc,) = out["services"]
    assert svc["metadata"]["name"] == "mt-head" and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == {"rft.dev/job": "mt", "rft.dev/role": "head"}
    assert 6379 in [p["port"] for p in svc["spec"]["ports"]]
    # the key reaches every pod only as a Secret reference
    assert all(env_of(p).get("TINKER_API_KEY") is None for p in out["pods"])


def test_the_example_is_a_head_and_two_bigger_workers():
    out = children(example("tinker-multinode.yaml"))
    head, *workers = out["pods"]
    assert len(workers) == 2 and out["services"][0]["metadata"]["name"] == "gsm8k-tinker-multinode-head"
    assert runtime(head)["resources"]["limits"] == {"cpu": "4", "memory": "8Gi"}
    assert all(runtime(w)["resources"]["limits"] == {"cpu": "8", "memory": "16Gi"} for w in workers)


@pytest.mark.parametrize("nodes", [0, 1])
def test_node_num_0_or_1_stays_the_single_pod_without_ray_or_service(nodes):
    out = children(rftjob("one", tinker_config(nodes)))
    (pod,) = out["pods"]
    assert runtime(pod)["command"][:2] == ["rft", "run"] and "RAY_ADDRESS" not in env_of(pod)
    assert out["services"] == []
    # one pod may join a Ray cluster that runs elsewhere (a KubeRay RayCluster): the user's RAY_ADDRESS stays
    external = children(rftjob("ext", tinker_config(nodes), env=[{"name": "RAY_ADDRESS", "value": "rc-head:6379"}]))
    assert env_of(external["pods"][0])["RAY_ADDRESS"] == "rc-head:6379"


def test_worker_templates_reach_the_workers_only_and_kueue_counts_every_pod():
    job = rftjob("tw", tinker_config(2), roleTemplates={"worker": {"spec": {
        "nodeSelector": {"pool": "cpu-big"},
        "containers": [{"name": "rft", "resources": {"requests": {"cpu": "16", "memory": "32Gi"}}}]}}})
    job["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "rl"}
    head, worker = children(job)["pods"]
    assert worker["spec"]["nodeSelector"] == {"pool": "cpu-big"} and "nodeSelector" not in head["spec"]
    assert runtime(worker)["resources"]["requests"] == {"cpu": "16", "memory": "32Gi"}
    assert runtime(head)["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    for pod in (head, worker):
        assert pod["metadata"]["annotations"]["kueue.x-k8s.io/pod-group-total-count"] == "2"


@pytest.mark.parametrize("job, field", [
    (rftjob("nw", tinker_config(1), roleTemplates={"worker": {"metadata": {"labels": {"a": "b"}}}}),
     "cluster.node_num"),
    (rftjob("ra", tinker_config(2), roleTemplates={"worker": {"spec": {"containers": [
        {"name": "rft", "env": [{"name": "RAY_ADDRESS", "value": "elsewhere:6379"}]}]}}}),
     "spec.roleTemplates.worker.spec.containers[rft].env[RAY_ADDRESS]"),
    (rftjob("gp", tinker_config(2), gpus={"perNode": 1}), "spec.gpus applies to veRL jobs only"),
    (rftjob("ex", tinker_config(2), env=[{"name": "RAY_ADDRESS", "value": "raycluster-head:6379"}]),
     "spec.env RAY_ADDRESS"),
])
def test_shapes_that_cannot_work_are_refused_naming_the_field(job, field):
    spec, config = shaped(job)
    issues = spec_issues(job, spec, config)
    assert any(field in i for i in issues), issues


def _scripts():
    verl = seed("verl-lora.yaml")
    verl["cluster"] = {"node_num": 2, "gpu_per_node": 4}
    for job in (rftjob("sh-t", tinker_config(3)), rftjob("sh-v", verl)):
        spec, config = shaped(job)
        for pod in build_pods(job, spec, config, attempt=0):
            yield job["metadata"]["name"], pod["metadata"]["labels"]["rft.dev/role"], runtime(pod)["command"]


@pytest.mark.parametrize("job, role, command", list(_scripts()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_pod_script_parses_and_without_ray_names_the_image_and_exits_2(job, role, command, tmp_path):
    assert command[:2] == ["sh", "-c"]
    parsed = subprocess.run(["sh", "-n", "-c", command[2]], capture_output=True, text=True, timeout=30)
    assert parsed.returncode == 0, parsed.stderr
    if job == "sh-v" and role == "head":
        return  # the veRL head hands over to `rft run`, which names the image itself
    # an image without ray: a PATH where nothing is found (sh's own builtins still run)
    ran = subprocess.run(["/bin/sh", "-c", command[2]], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PATH": str(tmp_path)})
    assert ran.returncode == 2, (ran.stdout, ran.stderr)
    assert ran.stderr.strip() == (NO_RAY_TINKER if job == "sh-t" else NO_TRINITY_WORKER)


def running(world, now):
    world.step(now)
    for name in world.objects["pods"]:
        world.set_phase(name, "Running")
    world.step(now + 1)
    workers = len(world.objects["pods"]) - 1
    assert world.status["phase"] == "Running" and world.status["workers"] == f"{workers}/{workers}"


def test_a_failed_worker_is_replaced_alone_and_counted_while_the_head_keeps_running():
    world = World(rftjob("fw", tinker_config(3), backoffLimit=1))
    running(world, T0)
    head = world.uid_of("fw-head")
    world.set_phase("fw-worker-2", "Failed", exit_code=137)
    plan = world.step(T0 + 10)
    assert plan.delete == [("pods", "fw-worker-2")] and plan.create == []
    st = world.status
    assert st["phase"] == "Running" and st["workerRestarts"] == 1 and st["retries"] == 0
    assert st["workers"] == "1/2" and st["readyWorkers"] == 1
    (event,) = [e for e in plan.events if e[1] == "WorkerRestarted"]
    assert event[0] == "Warning" and "fw-worker-2" in event[2] and "exit code 137" in event[2]
    plan = world.step(T0 + 11)  # gone: created again, nothing else touched
    assert [b["metadata"]["name"] for _, b in plan.create] == ["fw-worker-2"] and plan.delete == []
    assert any(e[1] == "WorkerRecreated" and "fw-worker-2" in e[2] for e in plan.events)
    assert world.uid_of("fw-head") == head and world.status["workerRestarts"] == 1
    world.set_phase("fw-worker-2", "Running")
    world.step(T0 + 12)
    assert world.status["workers"] == "2/2" and world.uid_of("fw-head") == head


def test_a_worker_failing_again_waits_for_its_backoff_before_its_replacement():
    assert [worker_backoff(n) for n in range(7)] == [0, 10, 20, 40, 80, 160, 300]
    world = World(rftjob("bo", tinker_config(2)))
    running(world, T0)
    world.set_phase("bo-worker-1", "Failed", exit_code=1, finished=T0 + 5)
    world.step(T0 + 5)
    world.step(T0 + 6)
    world.set_phase("bo-worker-1", "Failed", exit_code=1, finished=T0 + 20)
    plan = world.step(T0 + 21)
    # one restart so far: the second replacement waits 10 s after the worker ended
    assert plan.delete == [] and plan.requeue_after == pytest.approx(9.0)
    assert "replacing it at " + timestamp(T0 + 30) in world.status["message"]
    assert world.status["phase"] == "Running" and world.status["workers"] == "0/1"
    plan = world.step(T0 + 30)
    assert plan.delete == [("pods", "bo-worker-1")] and world.status["workerRestarts"] == 2


def test_a_worker_of_an_image_without_ray_fails_the_job_without_retries():
    world = World(rftjob("nr", tinker_config(2)))
    running(world, T0)
    world.set_phase("nr-worker-1", "Failed", exit_code=2)
    plan = world.step(T0 + 5)
    assert world.status["phase"] == "Failed" and world.status["reason"] == "RuntimeRefused"
    assert ("pods", "nr-head") in plan.delete and "workers" not in world.status


def test_a_failed_head_retries_the_whole_job_as_before():
    world = World(rftjob("fh", tinker_config(2), backoffLimit=2))
    running(world, T0)
    world.set_phase("fh-head", "Failed", exit_code=1)
    plan = world.step(T0 + 5)
    assert sorted(plan.delete) == [("pods", "fh-head"), ("pods", "fh-worker-1")]
    assert world.status["retries"] == 1 and world.status["reason"] == "Retrying"
    plan = world.step(T0 + 6)
    assert {b["metadata"]["labels"]["rft.dev/attempt"] for _, b in plan.create} == {"1"}


def _queued_tinker_job():
    # Kueue frees a failed pod of a group only once its replacement, under another name, exists
    job = rftjob("qw", tinker_config(2))
    job["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}
    return job


def _verl_job():
    config = seed("verl-lora.yaml")
    config["cluster"] = {"node_num": 2, "gpu_per_node": 4}
    return rftjob("vw", config)


@pytest.mark.parametrize("make_job", [_queued_tinker_job, _verl_job], ids=["queued-tinker", "verl"])
def test_a_worker_failure_retries_every_pod_where_one_worker_cannot_be_replaced_alone(make_job):
    job = make_job()
    name = job["metadata"]["name"]
    world = World(job)
    running(world, T0)
    world.set_phase(f"{name}-worker-1", "Failed", exit_code=1)
    plan = world.step(T0 + 5)
    assert sorted(plan.delete) == [("pods", f"{name}-head"), ("pods", f"{name}-worker-1")]
    assert world.status["retries"] == 1 and "workerRestarts" not in world.status


def test_the_job_runs_on_its_head_while_workers_are_pending_and_they_show_as_they_start():
    world = World(rftjob("pw", tinker_config(3)))
    world.step(T0)
    world.set_phase("pw-head", "Running")
    world.step(T0 + 1)
    st = world.status
    assert st["phase"] == "Running" and st["workers"] == "0/2" and st["readyWorkers"] == 0
    assert st["message"].startswith("the head is running, 0 of 2 workers ready")
    world.set_phase("pw-worker-1", "Running")
    world.step(T0 + 2)
    assert world.status["workers"] == "1/2"
    world.set_phase("pw-head", "Succeeded", exit_code=0)
    plan = world.step(T0 + 3)
    assert world.status["phase"] == "Succeeded" and "workers" not in world.status
    assert ("pods", "pw-worker-1") in plan.delete


def test_the_backoff_counts_from_the_container_end_or_else_the_ready_condition():
    from rft_operator.status import pod_finished_at

    term = {"name": "rft", "state": {"terminated": {"exitCode": 1, "finishedAt": timestamp(T0)}}}
    ready = {"type": "Ready", "status": "False", "lastTransitionTime": timestamp(T0 + 7)}
    assert pod_finished_at({"status": {"containerStatuses": [term], "conditions": [ready]}}, "rft") == T0
    # an evicted pod may carry no container state: its Ready condition turned False when it stopped
    assert pod_finished_at({"status": {"phase": "Failed", "conditions": [ready]}}, "rft") == T0 + 7
    assert pod_finished_at({"status": {"phase": "Failed"}}, "rft") is None
