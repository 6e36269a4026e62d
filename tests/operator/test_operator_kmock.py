"""The real operator (kopf's KopfRunner) against an emulated API server (kmock): what `kubectl` users see."""

from __future__ import annotations

import copy
import socket
import time
import urllib.request

import yaml
from kmock_harness import operator_process, wait_for
from rftjob_bodies import example, rftjob, seed

NS = "default"


def status(client, name):
    return (client.get("rftjobs", NS, name) or {}).get("status") or {}


def phase_is(client, name, phase, reason=None):
    def check():
        st = status(client, name)
        return st if st.get("phase") == phase and (reason is None or st.get("reason") == reason) else None
    return wait_for(check, 30, f"{name} to be {phase} {reason or ''}")


def condition(st, ctype):
    return next(c for c in st["conditions"] if c["type"] == ctype)


def events_for(client, name):
    return [(e["type"], e["reason"]) for e in client.list("events", NS)
            if e.get("involvedObject", {}).get("name") == name]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tinker_job_runs_to_success_with_pods_created_once_across_operator_restarts(
        api_server, client, kubeconfig, operator_env):
    body = example("tinker.yaml")
    name = body["metadata"]["name"]
    with operator_process():
        client.create("rftjobs", NS, body)
        pod = wait_for(lambda: client.get("pods", NS, f"{name}-head"), 30, "the pod")
        cm = client.get("configmaps", NS, f"{name}-config")
        assert cm is not None and "config.yaml" in cm["data"]
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["TINKER_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "tinker-api-key", "key": "api-key"}
        assert "nvidia.com/gpu" not in str(pod["spec"]["containers"][0]["resources"])
        st = phase_is(client, name, "Pending")
        assert condition(st, "Ready")["status"] == "False" and st["backend"] == "tinker"
        client.set_pod_phase(NS, f"{name}-head", "Running")
        st = phase_is(client, name, "Running")
        assert condition(st, "Ready")["status"] == "True" and st["algorithm"] == "grpo"
    # a restarted operator replays every object as new: it must adopt, not duplicate
    with operator_process():
        client.set_pod_phase(NS, f"{name}-head", "Succeeded", exit_code=0)
        st = phase_is(client, name, "Succeeded")
        assert condition(st, "Complete")["status"] == "True" and st["completionTime"]
    assert api_server.pod_creations() == 1
    assert client.get("rftjobs", NS, name)["spec"] == body["spec"]  # the operator never writes spec
    seen = events_for(client, name)
    assert ("Normal", "PodsRunning") in seen and ("Normal", "Completed") in seen


def test_invalid_config_fails_with_reasons_a_warning_event_and_no_children(client, running_operator):
    config = seed("tinker.yaml")
    config["buffer"]["batch_size"] = -4
    config["synchronizer"]["sync_stlye"] = "fixed"
    client.create("rftjobs", NS, rftjob("bad", config))
    st = phase_is(client, "bad", "Failed", "InvalidConfig")
    assert "buffer.batch_size" in st["message"] and "sync_style" in st["message"]
    assert condition(st, "Failed")["reason"] == "InvalidConfig"
    wait_for(lambda: ("Warning", "InvalidConfig") in events_for(client, "bad"), 10, "the warning event")
    assert client.get("pods", NS, "bad-head") is None and client.get("configmaps", NS, "bad-config") is None


def test_failed_pods_are_replaced_until_the_backoff_limit(api_server, client, running_operator):
    client.create("rftjobs", NS, rftjob("rt", backoffLimit=1))
    wait_for(lambda: client.get("pods", NS, "rt-head"), 30, "the pod")
    client.set_pod_phase(NS, "rt-head", "Failed", exit_code=1)
    wait_for(lambda: (client.get("pods", NS, "rt-head") or {}).get("metadata", {}).get("labels", {})
             .get("rft.dev/attempt") == "1", 30, "the replacement pod")
    st = status(client, "rt")
    assert st["retries"] == 1
    # exit 1 is a job error worth a retry (exit 2, the runtime refusing to start, is not retried)
    client.set_pod_phase(NS, "rt-head", "Failed", exit_code=1)
    st = phase_is(client, "rt", "Failed", "BackoffLimitExceeded")
    assert "exit code 1" in st["message"]
    assert api_server.pod_creations() == 2
    # the operator writes the status first and posts the event after it: the event can land just after the phase
    wait_for(lambda: ("Warning", "BackoffLimitExceeded") in events_for(client, "rt"), 10, "the warning event")


def test_suspend_and_resume_keep_storage_and_delete_drops_the_job(client, running_operator):
    client.create("rftjobs", NS, rftjob("sr", storage={"size": "1Gi"}))
    wait_for(lambda: client.get("pods", NS, "sr-head"), 30, "the pod")
    client.set_pod_phase(NS, "sr-head", "Running")
    phase_is(client, "sr", "Running")
    client.patch("rftjobs", NS, "sr", {"spec": {"suspend": True}})
    st = phase_is(client, "sr", "Suspended")
    assert condition(st, "Suspended")["status"] == "True"
    wait_for(lambda: client.get("pods", NS, "sr-head") is None, 30, "the pod to go")
    assert client.get("persistentvolumeclaims", NS, "sr-storage") is not None
    client.patch("rftjobs", NS, "sr", {"spec": {"suspend": False}})
    wait_for(lambda: client.get("pods", NS, "sr-head"), 30, "the pod to come back")
    st = phase_is(client, "sr", "Pending")
    assert condition(st, "Suspended")["status"] == "False"
    client.delete("rftjobs", NS, "sr")
    wait_for(lambda: client.get("rftjobs", NS, "sr") is None, 30, "the job to be deleted")


def test_verl_job_gets_gpu_pods_and_a_headless_service(client, running_operator):
    body = example("verl.yaml")
    name = body["metadata"]["name"]
    client.create("rftjobs", NS, body)
    pod = wait_for(lambda: client.get("pods", NS, f"{name}-head"), 30, "the head pod")
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    svc = wait_for(lambda: client.get("services", NS, f"{name}-head"), 30, "the head service")
    assert svc["spec"]["clusterIP"] == "None"
    assert phase_is(client, name, "Pending")["backend"] == "verl"


def printer_columns(obj):
    """Each additionalPrinterColumn of the CRD, resolved on one object (simple .a.b.c paths, as ours are)."""
    from rft_operator.crdgen import crd

    out = {}
    for column in crd()["spec"]["versions"][0]["additionalPrinterColumns"]:
        value = obj
        for part in column["jsonPath"].strip(".").split("."):
            value = value.get(part) if isinstance(value, dict) else None
        out[column["name"]] = value
    return out


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_operator_metrics_follow_the_jobs_and_forget_deleted_ones(client, kubeconfig, operator_env):
    from rft_operator import handlers

    liveness = free_port()
    with operator_process(liveness_port=liveness):
        port = handlers.STATE.metrics_port
        client.create("rftjobs", NS, rftjob("m1"))
        client.create("rftjobs", NS, rftjob("m2"))
        wait_for(lambda: scrape(port).get(("rft_operator_jobs", (("phase", "Pending"),))) == 2, 30, "2 pending")
        wait_for(lambda: client.get("pods", NS, "m1-head"), 30, "the pod")
        client.set_pod_phase(NS, "m1-head", "Running")
        wait_for(lambda: scrape(port).get(("rft_operator_jobs", (("phase", "Running"),))) == 1, 30, "1 running")
        samples = scrape(port)
        assert samples[("rft_operator_jobs", (("phase", "Pending"),))] == 1
        assert samples[("rft_operator_job_phase", (("name", "m1"), ("namespace", NS), ("phase", "Running")))] == 1
        assert samples[("rft_operator_reconciles_total", ())] >= 2
        assert ("rft_operator_job_duration_seconds", (("name", "m1"), ("namespace", NS))) in samples
        assert samples[("rft_operator_reconcile_duration_seconds_count", ())] >= 2
        client.delete("rftjobs", NS, "m1")
        wait_for(lambda: not any(dict(k[1]).get("name") == "m1" for k in scrape(port)), 30, "m1's series to go")
        samples = scrape(port)
        assert samples[("rft_operator_jobs", (("phase", "Running"),))] == 0
        assert samples[("rft_operator_jobs", (("phase", "Pending"),))] == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{liveness}/healthz", timeout=5) as resp:
            assert resp.status == 200


def test_status_progress_comes_from_the_runtime_metrics_endpoint(client, running_operator, runtime_endpoint):
    port, report = runtime_endpoint
    report(step=4, total=20, reward=0.625, loss=0.03125, age=0)
    job = rftjob("pg", metrics={"port": port})
    client.create("rftjobs", NS, job)
    wait_for(lambda: client.get("pods", NS, "pg-head"), 30, "the pod")
    client.set_pod_phase(NS, "pg-head", "Running", pod_ip="127.0.0.1")
    progress = wait_for(lambda: status(client, "pg").get("progress"), 30, "progress")
    assert progress["step"] == 4 and progress["totalSteps"] == 20
    assert progress["rewardMean"] == 0.625 and progress["loss"] == 0.03125 and progress["lastUpdateTime"]
    report(step=5, total=20, reward=0.75, loss=0.02, age=0)
    wait_for(lambda: status(client, "pg").get("progress", {}).get("step") == 5, 30, "step 5")
    # what `kubectl get rftjobs` prints: the CRD's printer columns evaluated on the stored object
    columns = printer_columns(client.get("rftjobs", NS, "pg"))
    assert columns["Phase"] == "Running" and columns["Step"] == "5/20" and columns["Reward"] == 0.75
    assert columns["Started"] == status(client, "pg")["startTime"]
    assert columns["Backend"] == "tinker" and columns["Algorithm"] == "grpo"
    # a step without a reward: status shows none rather than the previous step's
    report(step=6, total=20, reward=None, loss=0.01, age=0)
    progress = wait_for(lambda: (lambda p: p if p.get("step") == 6 else None)(status(client, "pg").get("progress")
                                                                               or {}), 30, "step 6")
    assert "rewardMean" not in progress and progress["loss"] == 0.01
    # the runtime stops making progress: a short progressDeadlineSeconds turns Stalled on
    report(step=6, total=20, reward=0.75, loss=0.02, age=120)
    client.patch("rftjobs", NS, "pg", {"spec": {"progressDeadlineSeconds": 60}})
    st = wait_for(lambda: (lambda s: s if s.get("conditions") and condition(s, "Stalled")["status"] == "True"
                           else None)(status(client, "pg")), 30, "Stalled")
    assert condition(st, "Stalled")["reason"] == "NoProgress" and st["phase"] == "Running"
    wait_for(lambda: ("Warning", "NoProgress") in events_for(client, "pg"), 10, "the warning event")
    assert copy.deepcopy(client.get("rftjobs", NS, "pg")["spec"]["config"]) == job["spec"]["config"]


def test_rbac_rules_cover_exactly_the_calls_the_operator_makes(api_server, client, running_operator):
    """Jobs that use every feature (configFrom, veRL Service, owned claim, spec change, TTL cleanup, a runtime,
    a RayCluster to join, an earlier release's finalizer to remove)."""
    from rft_operator.controller import LEGACY_FINALIZER
    from rft_operator.rbac import required_rules

    client.create("clusterrftruntimes", NS, {"metadata": {"name": "cpu", "uid": "rt-1"},
                                            "spec": {"nodeSelector": {"pool": "cpu"}}})
    client.create("rayclusters", NS, {"metadata": {"name": "rc", "namespace": NS, "uid": "rc-1"},
                                      "spec": {"headGroupSpec": {}}, "status": {"state": "ready"}})
    old = rftjob("old")
    old["metadata"]["finalizers"] = [LEGACY_FINALIZER]
    client.create("rftjobs", NS, old)
    client.create("rftjobs", NS, rftjob("joins", rayClusterRef={"name": "rc"}, runtimeRef={"name": "cpu"}))
    wait_for(lambda: not client.get("rftjobs", NS, "old")["metadata"].get("finalizers"), 30,
             "the earlier release's finalizer to go")
    pod = wait_for(lambda: client.get("pods", NS, "joins-head"), 30, "the pod that joins the RayCluster")
    assert pod["spec"]["nodeSelector"] == {"pool": "cpu"}

    config = seed("verl-lora.yaml")
    client.create("configmaps", NS, {"metadata": {"name": "src", "namespace": NS},
                                     "data": {"job.yaml": yaml.safe_dump(config)}})
    client.create("rftjobs", NS, rftjob("rb", None, configFrom={"configMapKeyRef": {"name": "src", "key": "job.yaml"}},
                                        storage={"size": "1Gi"}, ttlSecondsAfterFinished=0))
    client.request("PATCH", "/apis/rft.dev/v1alpha1/namespaces/default/rftjobs/rb",
                   {"spec": {"config": None}}, "application/merge-patch+json")
    # the first pass may still see the Tinker config the job was created with: wait for the veRL children
    wait_for(lambda: client.get("services", NS, "rb-head"), 30, "the head Service of the veRL config")
    wait_for(lambda: client.get("pods", NS, "rb-head"), 30, "the pod")
    assert client.get("persistentvolumeclaims", NS, "rb-storage")
    client.set_pod_phase(NS, "rb-head", "Running")
    phase_is(client, "rb", "Running")
    config["algorithm"]["optimizer"]["lr"] = 5e-6
    client.patch("configmaps", NS, "src", {"data": {"job.yaml": yaml.safe_dump(config)}})
    wait_for(lambda: "5.0e-06" in client.get("configmaps", NS, "rb-config")["data"]["config.yaml"], 20,
             "the new config")
    wait_for(lambda: (lambda pod: pod is not None and pod.get("status") is None)(client.get("pods", NS, "rb-head")),
             20, "the restarted pod")
    client.set_pod_phase(NS, "rb-head", "Succeeded", exit_code=0)
    wait_for(lambda: status(client, "rb").get("cleanedUp"), 30, "the TTL cleanup")
    # the status is written before the deletes it announces (one pass), so the children go just after it
    wait_for(lambda: client.get("pods", NS, "rb-head") is None and client.get("services", NS, "rb-head") is None,
             10, "the pod and the Service removed by the TTL cleanup")
    assert client.get("rftjobs", NS, "rb")["status"]["phase"] == "Succeeded"

    allowed = {(g, r, v) for rule in required_rules() for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    used = api_server.operator_calls()
    assert used <= allowed, f"calls without an RBAC rule: {used - allowed}"
    assert allowed == used, f"rules for calls never made: {allowed - used}"


def test_the_rft_operator_console_script_runs_the_operator(api_server, client, kubeconfig, tmp_path):
    """`rft-operator` itself (a separate process): liveness, metrics, and a job turned into its pod."""
    import os
    import signal
    import subprocess
    import sys

    metrics, liveness = free_port(), free_port()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "RFT_OPERATOR_RESYNC_SECONDS": "1"}
    log = (tmp_path / "operator.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from rft_operator.main import main; sys.exit(main())",
         "-A", "--metrics-port", str(metrics), "--liveness", f"http://127.0.0.1:{liveness}/healthz"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        client.create("rftjobs", NS, rftjob("cli"))
        wait_for(lambda: client.get("pods", NS, "cli-head"), 30, "the pod from rft-operator")
        with urllib.request.urlopen(f"http://127.0.0.1:{liveness}/healthz", timeout=5) as resp:
            assert resp.status == 200
        wait_for(lambda: scrape(metrics).get(("rft_operator_jobs", (("phase", "Pending"),))) == 1, 20,
                 "the job counted as Pending")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
    assert proc.returncode == 0, (tmp_path / "operator.log").read_text()[-3000:]


def test_a_pod_template_mounts_a_users_claim_and_a_conflicting_one_fails_without_pods(client, running_operator):
    template = {
        "metadata": {"annotations": {"vault.hashicorp.com/agent-inject": "true"}},
        "spec": {"volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "model-cache"}}],
                 "containers": [{"name": "rft", "volumeMounts": [{"name": "models", "mountPath": "/models"}]}]},
    }
    client.create("rftjobs", NS, rftjob("tpl", podTemplate=template))
    pod = wait_for(lambda: client.get("pods", NS, "tpl-head"), 30, "the pod")
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "model-cache"}} in pod["spec"]["volumes"]
    rft = pod["spec"]["containers"][0]
    assert {"name": "models", "mountPath": "/models"} in rft["volumeMounts"]
    assert pod["metadata"]["annotations"]["vault.hashicorp.com/agent-inject"] == "true"
    bad = {"spec": {"containers": [{"name": "rft", "command": ["sleep", "infinity"]}]}}
    client.create("rftjobs", NS, rftjob("tplbad", podTemplate=bad))
    st = phase_is(client, "tplbad", "Failed", "InvalidSpec")
    assert "spec.podTemplate.spec.containers[rft].command" in st["message"]
    wait_for(lambda: ("Warning", "InvalidSpec") in events_for(client, "tplbad"), 10, "the warning event")
    assert client.get("pods", NS, "tplbad-head") is None


def test_a_pod_the_api_server_refuses_fails_the_job_with_the_servers_message(api_server, client, running_operator):
    # kmock checks no pod schema; a real server answers a template's typo like this (the one failure mocked)
    refusal = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422,
               "message": 'Pod "typo-head" is invalid: spec.containers[1].image: Required value'}
    api_server.emulator[f"post /api/v1/namespaces/{NS}/pods"] << 422 << refusal
    client.create("rftjobs", NS, rftjob("typo", podTemplate={"spec": {"containers": [{"name": "sidecar"}]}}))
    st = phase_is(client, "typo", "Failed", "InvalidSpec")
    assert "spec.containers[1].image: Required value" in st["message"]
    posts = api_server.pod_creations()
    time.sleep(3)  # three resyncs: the same spec is not tried again
    assert api_server.pod_creations() == posts == 1
    assert status(client, "typo")["reason"] == "InvalidSpec"


def test_a_multi_node_tinker_job_is_a_head_and_cpu_workers_and_a_failed_worker_is_replaced_alone(
        api_server, client, running_operator):
    config = seed("tinker.yaml")
    config["cluster"] = {"node_num": 3}
    client.create("rftjobs", NS, rftjob("mn", config))
    names = ["mn-head", "mn-worker-1", "mn-worker-2"]
    pods = {n: wait_for(lambda n=n: client.get("pods", NS, n), 30, f"pod {n}") for n in names}
    assert client.get("services", NS, "mn-head")["spec"]["selector"]["rft.dev/role"] == "head"
    for pod in pods.values():
        rft = pod["spec"]["containers"][0]
        assert "gpu" not in str(rft.get("resources")).lower() and "--num-gpus=0" in rft["command"][2]
    head_env = {e["name"]: e.get("value") for e in pods["mn-head"]["spec"]["containers"][0]["env"]}
    assert head_env["RAY_ADDRESS"] == "127.0.0.1:6379"
    for name in names[1:]:
        rft = pods[name]["spec"]["containers"][0]
        assert "ray start --address=mn-head:6379" in rft["command"][2]
        assert {"name": "RAY_ADDRESS", "value": "mn-head:6379"} in rft["env"]

    def workers(shown):
        return wait_for(lambda: printer_columns(client.get("rftjobs", NS, "mn"))["Workers"] == shown, 30,
                        f"the Workers column to show {shown}")

    workers("0/2")
    client.set_pod_phase(NS, "mn-head", "Running")
    phase_is(client, "mn", "Running")  # the head trains while its workers start
    client.set_pod_phase(NS, "mn-worker-1", "Running")
    workers("1/2")
    client.set_pod_phase(NS, "mn-worker-2", "Running")
    workers("2/2")
    head_uid = client.get("pods", NS, "mn-head")["metadata"]["uid"]
    old_uid = client.get("pods", NS, "mn-worker-1")["metadata"]["uid"]
    client.set_pod_phase(NS, "mn-worker-1", "Failed", exit_code=137)
    fresh = wait_for(lambda: (lambda p: p if p and p["metadata"]["uid"] != old_uid else None)(
        client.get("pods", NS, "mn-worker-1")), 30, "the replacement of mn-worker-1")
    assert fresh.get("status") is None and fresh["metadata"]["labels"]["rft.dev/attempt"] == "0"
    head = client.get("pods", NS, "mn-head")
    assert head["metadata"]["uid"] == head_uid and head["status"]["phase"] == "Running"
    st = status(client, "mn")
    assert st["phase"] == "Running" and st["workerRestarts"] == 1 and st["retries"] == 0
    workers("1/2")
    wait_for(lambda: ("Warning", "WorkerRestarted") in events_for(client, "mn"), 10, "the WorkerRestarted event")
    restarted = next(e for e in client.list("events", NS) if e["reason"] == "WorkerRestarted")
    assert "mn-worker-1" in restarted["message"] and "exit code 137" in restarted["message"]
    # a worker deleted by someone else (a drain, kubectl delete) comes back too
    gone_uid = client.get("pods", NS, "mn-worker-2")["metadata"]["uid"]
    client.delete("pods", NS, "mn-worker-2")
    wait_for(lambda: (lambda p: p and p["metadata"]["uid"] != gone_uid)(client.get("pods", NS, "mn-worker-2")),
             30, "mn-worker-2 created again")
    wait_for(lambda: ("Normal", "WorkerRecreated") in events_for(client, "mn"), 10, "the WorkerRecreated event")
    assert client.get("pods", NS, "mn-head")["metadata"]["uid"] == head_uid
    assert api_server.pod_creations() == 5


def test_a_worker_template_on_a_single_node_tinker_job_is_refused_naming_cluster_node_num(client, running_operator):
    client.create("rftjobs", NS, rftjob("nowk", roleTemplates={"worker": {"metadata": {"labels": {"a": "b"}}}}))
    st = phase_is(client, "nowk", "Failed", "InvalidSpec")
    assert "spec.roleTemplates.worker" in st["message"] and "cluster.node_num" in st["message"]
    assert client.get("pods", NS, "nowk-head") is None
