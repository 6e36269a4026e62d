"""spec.podTemplate / spec.roleTemplates, spec.gpus, Kueue pod groups and refused runtimes: the pods users get."""

from __future__ import annotations

import copy

import celpy
import kubernetes_validate
import pytest
from rftjob_bodies import rftjob, seed
from test_reconcile import T0, World

from rft_operator import crdgen
from rft_operator.builders import build_pods, spec_hash, spec_issues
from rft_operator.jobconfig import facts_of, prepare_config
from rft_operator.podtemplate import merge
from rft_operator.spec import DEFAULT_IMAGE, parse_spec

PVC_TEMPLATE = {
    "metadata": {"annotations": {"sidecar.istio.io/inject": "false"}, "labels": {"cost-center": "ml-42"}},
    "spec": {
        "volumes": [{"name": "tasks", "persistentVolumeClaim": {"claimName": "shared-tasks", "readOnly": True}}],
        "containers": [{"name": "rft", "volumeMounts": [{"name": "tasks", "mountPath": "/data/tasks",
                                                         "readOnly": True}]}],
    },
}


def verl_config(nodes=3, gpus=2):
    config = seed("verl-lora.yaml")
    config["cluster"] = {"node_num": nodes, "gpu_per_node": gpus}
    return config


def pods_of(job, **parse):
    spec = parse_spec(job["spec"], **parse)
    config = prepare_config(job["spec"]["config"], spec, job_name=job["metadata"]["name"], namespace="default")
    assert config.valid, config.issues
    return spec, config, build_pods(job, spec, config, attempt=0)


def runtime(pod):
    return next(c for c in pod["spec"]["containers"] if c["name"] == "rft")


def issues_of(job):
    spec = parse_spec(job["spec"])
    config = prepare_config(job["spec"]["config"], spec, job_name=job["metadata"]["name"], namespace="default")
    return spec_issues(job, spec, config)


def test_a_users_pvc_is_mounted_next_to_the_operators_volumes_with_labels_and_annotations():
    _, _, (pod,) = pods_of(rftjob("pvc", podTemplate=PVC_TEMPLATE, storage={"size": "1Gi"}))
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert set(volumes) == {"config", "job-dir", "tasks"}
    assert volumes["tasks"]["persistentVolumeClaim"] == {"claimName": "shared-tasks", "readOnly": True}
    assert volumes["job-dir"]["persistentVolumeClaim"]["claimName"] == "pvc-storage"
    mounts = {m["mountPath"]: m["name"] for m in runtime(pod)["volumeMounts"]}
    assert mounts == {"/etc/rft": "config", "/var/lib/rft": "job-dir", "/data/tasks": "tasks"}
    meta = pod["metadata"]
    assert meta["annotations"]["sidecar.istio.io/inject"] == "false" and "rft.dev/spec-hash" in meta["annotations"]
    assert meta["labels"]["cost-center"] == "ml-42" and meta["labels"]["rft.dev/job"] == "pvc"
    # the runtime container keeps everything the operator gave it
    assert runtime(pod)["command"][:2] == ["rft", "run"] and runtime(pod)["image"] == DEFAULT_IMAGE
    kubernetes_validate.validate(pod, "1.30", strict=True)


def test_sidecars_init_containers_and_pod_level_fields_merge_in():
    template = {"spec": {
        "initContainers": [{"name": "fetch", "image": "busybox:1.36", "command": ["true"]}],
        "containers": [{"name": "log-shipper", "image": "fluent/fluent-bit:3.0"},
                       {"name": "rft", "env": [{"name": "HF_HOME", "value": "/models"}, {"name": "EXTRA", "value": "1"}],
                        "resources": {"requests": {"cpu": "3"}}}],
        "imagePullSecrets": [{"name": "regcred"}],
        "runtimeClassName": "gvisor",
        "securityContext": {"fsGroup": 2000, "supplementalGroups": [3000]},
        "tolerations": [{"key": "dedicated", "operator": "Exists"}],
    }}
    job = rftjob("side", podTemplate=template, tolerations=[{"key": "old", "operator": "Exists"}])
    _, _, (pod,) = pods_of(job)
    spec = pod["spec"]
    assert [c["name"] for c in spec["containers"]] == ["rft", "log-shipper"]
    assert spec["initContainers"][0]["name"] == "fetch"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}] and spec["runtimeClassName"] == "gvisor"
    # maps merge: the template's fsGroup wins, the operator's non-root settings stay
    assert spec["securityContext"]["fsGroup"] == 2000 and spec["securityContext"]["runAsNonRoot"] is True
    # tolerations have no merge key in the Kubernetes API: the template's list replaces spec.tolerations
    assert spec["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    env = {e["name"]: e.get("value") for e in runtime(pod)["env"]}
    assert env["HF_HOME"] == "/models" and env["EXTRA"] == "1" and env["RFT_JOB_NAME"] == "side"
    # resources is a map: the template's cpu replaces the default, the default memory request stays
    assert runtime(pod)["resources"] == {"requests": {"cpu": "3", "memory": "2Gi"}}
    kubernetes_validate.validate(pod, "1.30", strict=True)


def test_strategic_merge_semantics():
    base = {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}],
                            "ports": [{"containerPort": 80, "name": "http"}]}],
            "volumes": [{"name": "v", "emptyDir": {}}], "nodeSelector": {"a": "1", "b": "2"}}
    overlay = {"containers": [{"name": "a", "env": [{"name": "Y", "value": "3"}, {"name": "Z", "value": "4"}],
                               "ports": [{"containerPort": 80, "protocol": "TCP"}]}],
               "volumes": [{"name": "v", "$patch": "delete"}, {"name": "w", "emptyDir": {}}],
               "nodeSelector": {"b": None, "c": "3"}}
    out = merge(base, overlay)
    assert out["containers"][0]["env"] == [{"name": "X", "value": "1"}, {"name": "Y", "value": "3"},
                                           {"name": "Z", "value": "4"}]
    assert out["containers"][0]["ports"] == [{"containerPort": 80, "name": "http", "protocol": "TCP"}]
    assert out["volumes"] == [{"name": "w", "emptyDir": {}}]
    assert out["nodeSelector"] == {"a": "1", "c": "3"}
    assert base["nodeSelector"] == {"a": "1", "b": "2"}, "the base is not changed"


@pytest.mark.parametrize("template, field", [
    ({"spec": {"containers": [{"name": "rft", "command": ["sleep", "infinity"]}]}},
     "spec.podTemplate.spec.containers[rft].command"),
    ({"spec": {"containers": [{"name": "rft", "image": "mine:1"}]}}, "spec.podTemplate.spec.containers[rft].image"),
    ({"spec": {"volumes": [{"name": "config", "emptyDir": {}}]}}, "spec.podTemplate.spec.volumes[config]"),
    ({"spec": {"containers": [{"name": "rft", "volumeMounts": [{"name": "x", "mountPath": "/var/lib/rft"}]}]}},
     "spec.podTemplate.spec.containers[rft].volumeMounts[/var/lib/rft]"),
    ({"spec": {"containers": [{"name": "rft", "env": [{"name": "RFT_JOB_NAME", "value": "x"}]}]}},
     "spec.podTemplate.spec.containers[rft].env[RFT_JOB_NAME]"),
    ({"spec": {"restartPolicy": "OnFailure"}}, "spec.podTemplate.spec.restartPolicy"),
    ({"metadata": {"labels": {"rft.dev/job": "other"}}}, "spec.podTemplate.metadata.labels[rft.dev/job]"),
    ({"spec": {"containers": [{"name": "rft", "ports": [{"name": "metrics", "containerPort": 9000}]}]}},
     "spec.podTemplate.spec.containers[rft].ports[metrics]"),
])
def test_a_template_that_touches_the_operators_fields_fails_the_job_naming_the_field(template, field):
    world = World(rftjob("clash", podTemplate=template))
    world.step(T0)
    status = world.job["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec")
    assert field in status["message"], status["message"]
    assert world.objects["pods"] == {} and world.pod_creates == 0
    assert world.cond("Failed")["reason"] == "InvalidSpec"


def test_a_fixed_template_starts_the_job():
    bad = {"spec": {"containers": [{"name": "rft", "command": ["sleep", "1"]}]}}
    world = World(rftjob("fix", podTemplate=bad))
    world.step(T0)
    assert world.job["status"]["reason"] == "InvalidSpec"
    world.job["spec"]["podTemplate"] = PVC_TEMPLATE
    world.step(T0 + 5)
    assert world.job["status"]["phase"] == "Pending" and list(world.objects["pods"]) == ["fix-head"]


def _rules(schema, path):
    node = schema
    for key in path:
        node = node["properties"][key] if key != "[]" else node["items"]
    return node.get("x-kubernetes-validations") or []


def _cel_admits(rules, value):
    env = celpy.Environment()
    verdicts = []
    for rule in rules:
        program = env.program(env.compile(rule["rule"]))
        verdicts.append((bool(program.evaluate({"self": celpy.json_to_cel(value)})), rule["message"]))
    return verdicts


def test_the_crd_refuses_the_static_conflicts_with_a_422_message():
    spec_schema = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for where in (("podTemplate",), ("roleTemplates", "head"), ("roleTemplates", "worker")):
        containers = _rules(spec_schema, (*where, "spec", "containers"))
        refused = _cel_admits(containers, [{"name": "side", "command": ["x"]}, {"name": "rft", "command": ["sleep"]}])
        assert [m for ok, m in refused if not ok] == [
            "containers[rft]: command, args and image belong to the operator (use spec.image)"]
        mounts = _cel_admits(containers, [{"name": "rft", "volumeMounts": [{"name": "x", "mountPath": "/etc/rft"}]}])
        assert [ok for ok, _ in mounts] == [True, False, True]
        env = _cel_admits(containers, [{"name": "rft", "env": [{"name": "POD_IP", "value": "1"}]}])
        assert [ok for ok, _ in env] == [True, True, False]
        fine = PVC_TEMPLATE["spec"]["containers"] + [{"name": "sidecar", "image": "x", "command": ["y"]}]
        assert all(ok for ok, _ in _cel_admits(containers, fine))
        volumes = _rules(spec_schema, (*where, "spec", "volumes"))
        assert [ok for ok, _ in _cel_admits(volumes, [{"name": "job-dir", "emptyDir": {}}])] == [False]
        assert all(ok for ok, _ in _cel_admits(volumes, PVC_TEMPLATE["spec"]["volumes"]))
        pod_spec = _rules(spec_schema, (*where, "spec"))
        assert [ok for ok, _ in _cel_admits(pod_spec, {"restartPolicy": "Always"})] == [False]


def test_role_templates_give_head_and_workers_their_own_resources_and_gpus_stay():
    job = rftjob("roles", verl_config(nodes=3, gpus=2),
                 podTemplate={"metadata": {"labels": {"team": "rl"}}},
                 roleTemplates={"head": {"spec": {"containers": [{"name": "rft", "resources": {
                     "requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "64Gi"}}}]}},
                     "worker": {"spec": {"containers": [{"name": "rft", "resources": {
                         "requests": {"cpu": "4", "memory": "32Gi"}}}],
                         "nodeSelector": {"pool": "gpu-workers"}}}})
    _, _, pods = pods_of(job)
    head, workers = pods[0], pods[1:]
    assert runtime(head)["resources"]["requests"] == {"cpu": "8", "memory": "64Gi"}
    assert runtime(head)["resources"]["limits"] == {"memory": "64Gi", "nvidia.com/gpu": "2"}
    assert "nodeSelector" not in head["spec"]
    assert len(workers) == 2
    for pod in workers:
        assert runtime(pod)["resources"]["requests"]["cpu"] == "4"
        assert runtime(pod)["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert pod["spec"]["nodeSelector"] == {"pool": "gpu-workers"}
    assert all(p["metadata"]["labels"]["team"] == "rl" for p in pods)
    for pod in pods:
        kubernetes_validate.validate(pod, "1.30", strict=True)


def test_a_worker_template_on_a_job_without_workers_is_refused():
    issues = issues_of(rftjob("nowork", roleTemplates={"worker": {"metadata": {"labels": {"a": "b"}}}}))
    assert any("spec.roleTemplates.worker" in i and "no worker pods" in i for i in issues)


def test_a_template_cannot_request_the_gpus_itself():
    template = {"spec": {"containers": [{"name": "rft", "resources": {"limits": {"nvidia.com/gpu": "8"}}}]}}
    issues = issues_of(rftjob("gpu", verl_config(2, 2), roleTemplates={"worker": template}))
    assert any("spec.roleTemplates.worker.spec.containers[rft].resources[nvidia.com/gpu]" in i and
               "spec.gpus.perNode" in i for i in issues)


@pytest.mark.parametrize("resource", ["nvidia.com/mig-1g.10gb", "amd.com/gpu"])
def test_the_gpu_resource_name_comes_from_spec_gpus(resource):
    _, _, pods = pods_of(rftjob("mig", verl_config(2, 3), gpus={"resourceName": resource}))
    for pod in pods:
        limits = runtime(pod)["resources"]["limits"]
        assert limits == {resource: "3"}, limits
        assert "--num-gpus=3" in runtime(pod)["command"][2]


def test_gpu_count_from_the_spec_when_the_config_says_detect():
    job = rftjob("det", verl_config(2, 2), gpus={"perNode": 4})
    spec = parse_spec(job["spec"])
    config = prepare_config(job["spec"]["config"], spec, job_name="det", namespace="default")
    # Trinity's 0 (= detect from the Ray cluster): a pod still has to ask Kubernetes for a number
    config.cfg = config.cfg.model_copy(update={"cluster": config.cfg.cluster.model_copy(
        update={"gpu_per_node": 0, "node_num": 0})})
    config.facts = facts_of(config.cfg)
    assert spec_issues(job, spec, config) == []
    pods = build_pods(job, spec, config, attempt=0)
    assert len(pods) == 1, "node_num 0 runs one pod"
    assert runtime(pods[0])["resources"]["limits"] == {"nvidia.com/gpu": "4"}
    # without spec.gpus.perNode the pod asks for what the job's engines and trainer need
    no_count = parse_spec({**job["spec"], "gpus": {}})
    assert spec_issues(job, no_count, config) == []
    rollout = config.cfg.explorer.rollout_model
    need = rollout.engine_num * rollout.tensor_parallel_size + 1
    (pod,) = build_pods(job, no_count, config, attempt=0)
    assert runtime(pod)["resources"]["limits"] == {"nvidia.com/gpu": str(need)}
    zero = parse_spec({**job["spec"], "gpus": {"perNode": 0}})
    (issue,) = spec_issues(job, zero, config)
    assert "spec.gpus.perNode" in issue and "at least one GPU" in issue


def test_gpu_counts_that_disagree_and_gpus_on_a_tinker_job_are_refused():
    (issue,) = issues_of(rftjob("two", verl_config(1, 2), gpus={"perNode": 4}))
    assert "spec.gpus.perNode 4 differs from spec.config cluster.gpu_per_node 2" in issue
    (issue,) = issues_of(rftjob("tk", gpus={"resourceName": "amd.com/gpu"}))
    assert "spec.gpus applies to veRL jobs only" in issue


def test_verl_jobs_default_to_the_gpu_image_and_tinker_jobs_to_the_runtime_image():
    _, _, pods = pods_of(rftjob("img", verl_config(2, 1)), default_image="reg/rft:2",
                         default_verl_image="reg/rft:2-verl")
    assert {runtime(p)["image"] for p in pods} == {"reg/rft:2-verl"}
    head = runtime(pods[0])["command"][2]
    # an image without Trinity: `rft run` runs first and names what is missing (exit 2)
    assert head.startswith("if ! command -v trinity") and "then exec rft run" in head
    assert "exit 2" in runtime(pods[1])["command"][2]
    _, _, (pod,) = pods_of(rftjob("img-t"), default_image="reg/rft:2", default_verl_image="reg/rft:2-verl")
    assert runtime(pod)["image"] == "reg/rft:2"
    _, _, pods = pods_of(rftjob("img-x", verl_config(1, 1), image="mine/verl:1"), default_verl_image="reg/v")
    assert runtime(pods[0])["image"] == "mine/verl:1"
    assert runtime(pods[0])["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_templates_enter_the_spec_hash_only_when_set():
    job = rftjob("hash")
    spec, config, _ = pods_of(job)
    base = spec_hash(spec, config)
    for empty in ({"podTemplate": {}}, {"roleTemplates": {}}, {"roleTemplates": {"head": {}}}, {"gpus": {}}):
        other = copy.deepcopy(job)
        other["spec"].update(empty)
        s2, c2, _ = pods_of(other)
        assert spec_hash(s2, c2) == base, empty
    other = copy.deepcopy(job)
    other["spec"]["podTemplate"] = PVC_TEMPLATE
    s2, c2, _ = pods_of(other)
    assert spec_hash(s2, c2) != base


def test_a_queue_label_makes_the_pods_one_kueue_pod_group():
    job = rftjob("q", verl_config(3, 1))
    job["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a", "kueue.x-k8s.io/priority-class": "high"}
    _, _, pods = pods_of(job)
    groups = {p["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] for p in pods}
    assert len(groups) == 1 and len(groups.pop()) <= 63
    for pod in pods:
        assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        assert pod["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "high"
        assert pod["metadata"]["annotations"]["kueue.x-k8s.io/pod-group-total-count"] == "3"
        assert pod["metadata"]["annotations"]["kueue.x-k8s.io/retriable-in-group"] == "false"
    _, _, pods = pods_of(rftjob("noq", verl_config(2, 1)))
    assert not any("kueue" in str(p["metadata"]) for p in pods)


def test_a_job_whose_pods_kueue_holds_is_waiting_for_admission_and_its_deadline_waits_too():
    job = rftjob("adm", verl_config(2, 1), activeDeadlineSeconds=60)
    job["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}
    world = World(job)
    world.step(T0)
    assert "startTime" not in world.job["status"], "the clock starts at admission, not at creation"
    # Kueue's webhook gates every pod of the group until the group is admitted
    for pod in world.objects["pods"].values():
        pod["spec"]["schedulingGates"] = [{"name": "kueue.x-k8s.io/admission"}]
        pod["status"] = {"phase": "Pending"}
    world.step(T0 + 3600)
    st = world.job["status"]
    assert (st["phase"], st["reason"]) == ("Pending", "WaitingForAdmission") and "startTime" not in st
    assert "waiting for Kueue to admit the pod group (queue team-a)" in st["message"]
    for name, pod in world.objects["pods"].items():
        pod["spec"].pop("schedulingGates")
        world.set_phase(name, "Running")
    world.step(T0 + 3601)
    assert world.job["status"]["phase"] == "Running" and world.job["status"]["startTime"]


def test_the_watch_cache_keeps_the_kueue_gate_the_decisions_read():
    from rft_operator.cache import trim_child
    from rft_operator.status import pod_gated_by_kueue, pod_problem

    _, _, pods = pods_of(rftjob("gate", verl_config(1, 1)))
    pod = {**pods[0], "status": {"phase": "Pending"}}
    pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = "team-a"
    pod["spec"]["schedulingGates"] = [{"name": "kueue.x-k8s.io/admission"}]
    cached = trim_child("pods", pod)  # what the running operator's index holds of the pod
    assert pod_gated_by_kueue(cached) and "queue team-a" in pod_problem(cached)
    del pod["spec"]["schedulingGates"]
    assert not pod_gated_by_kueue(trim_child("pods", pod))


def test_a_runtime_that_refuses_to_start_fails_the_job_at_once_with_its_message():
    world = World(rftjob("noimg", verl_config(1, 1), backoffLimit=3))
    world.step(T0)
    text = ("rft run: this config trains with veRL (model.tinker.enable is false), which runs Trinity-RFT on GPUs, "
            "and `trinity` is not installed here: use an image with trinity-rft installed")
    world.objects["pods"]["noimg-head"]["status"] = {"phase": "Failed", "containerStatuses": [{
        "name": "rft", "state": {"terminated": {"exitCode": 2, "reason": "Error", "message": text + "\n"}}}]}
    world.step(T0 + 2)
    st = world.job["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "RuntimeRefused") and st["retries"] == 0
    assert "exit code 2" in st["message"] and "trinity-rft" in st["message"]
    assert world.pod_creates == 1


@pytest.mark.parametrize("status, message, final", [
    (422, 'Pod "x" is invalid: spec.containers[1].image: Required value', True),
    (403, 'pods "x" is forbidden: violates PodSecurity "restricted:latest": runAsNonRoot != true', True),
    (400, 'admission webhook "validate.kyverno.svc" denied the request: label team is required', True),
    (403, 'pods is forbidden: User "system:serviceaccount:rft:rft" cannot create resource "pods"', False),
    (403, 'pods "x" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=10, limited: pods=10',
     False),
])
def test_which_pod_refusals_fail_the_job_and_which_are_retried(status, message, final):
    from rft_operator.controller import refused_for_good
    from rft_operator.kube import KubeError

    assert refused_for_good(KubeError(status, "Invalid" if status != 403 else "Forbidden", message)) is final


def test_the_platform_example_makes_valid_pods_the_crd_admits():
    import yaml
    from rftjob_bodies import ROOT

    job = yaml.safe_load((ROOT / "examples" / "rftjobs" / "verl-platform.yaml").read_text())
    job["metadata"].update(namespace="default", uid="u-1")
    job["spec"].pop("configFrom")
    job["spec"]["config"] = seed("verl-lora.yaml")  # what the ConfigMap of the example's comment holds
    assert issues_of(job) == []
    _, _, (pod,) = pods_of(job, default_verl_image="reg/rft:1-verl")
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert runtime(pod)["resources"]["limits"] == {"memory": "128Gi", "nvidia.com/gpu": "8"}
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in runtime(pod)["volumeMounts"]
    kubernetes_validate.validate(pod, "1.30", strict=True)
    spec_schema = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for where in (("podTemplate",), ("roleTemplates", "head")):
        template = job["spec"]
        for key in where:
            template = template[key]
        for part, rules in (("containers", _rules(spec_schema, (*where, "spec", "containers"))),
                            ("volumes", _rules(spec_schema, (*where, "spec", "volumes")))):
            if part in template["spec"]:
                assert all(ok for ok, _ in _cel_admits(rules, template["spec"][part])), (where, part)


def test_the_head_pods_command_in_an_image_without_trinity_fails_the_job_with_the_runtimes_words(tmp_path):
    """The veRL head's real command, run with this repository's `rft` and no `trinity` on PATH (as in the
    default image); its log's last line becomes the termination message (FallbackToLogsOnError)."""
    import os
    import shutil
    import subprocess

    rft = shutil.which("rft")
    if rft is None:
        pytest.skip("the rft console script is not installed (pip install -e .)")
    world = World(rftjob("plain", verl_config(1, 1), backoffLimit=3))
    world.step(T0)
    pod = world.objects["pods"]["plain-head"]
    (config_map,) = world.objects["configmaps"].values()
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config_map["data"]["config.yaml"])
    script = runtime(pod)["command"][2].replace("/etc/rft/config.yaml", str(config_file))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "rft").symlink_to(rft)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
           **{e["name"]: e["value"] for e in runtime(pod)["env"] if "value" in e and e["name"] != "HOME"}}
    proc = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    log = proc.stdout + proc.stderr
    pod["status"] = {"phase": "Failed", "containerStatuses": [{"name": "rft", "state": {"terminated": {
        "exitCode": proc.returncode, "reason": "Error", "message": log[-2048:]}}}]}
    world.step(T0 + 5)
    st = world.job["status"]
    assert (st["phase"], st["reason"], st["retries"]) == ("Failed", "RuntimeRefused", 0)
    assert "trinity-rft" in st["message"] and "spec.image" in st["message"]
