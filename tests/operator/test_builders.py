"""The pure builders: what pods, ConfigMap, Service and claim an RFTJob turns into, for both backends."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
import yaml
from rftjob_bodies import rftjob, seed

from rft_operator.builders import build_pods, desired_children, spec_hash
from rft_operator.jobconfig import prepare_config
from rft_operator.spec import parse_spec


def children(job):
    spec = parse_spec(job["spec"])
    config = prepare_config(job["spec"]["config"], spec, job_name=job["metadata"]["name"], namespace="default")
    assert config.valid, config.issues
    return spec, config, desired_children(job, spec, config, attempt=0, with_pods=True)


def env_of(pod):
    return {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}


def test_tinker_job_is_one_pod_without_gpu_and_the_key_only_from_the_secret(monkeypatch):
    # even when the operator's own environment holds a key, it never lands in a child object
    monkeypatch.setenv("TINKER_API_KEY", "tml-operator-side-secret")
    job = rftjob("t1", tinker={"apiKeySecretRef": {"name": "tinker", "key": "token"}})
    _, config, out = children(job)
    assert [p["metadata"]["name"] for p in out["pods"]] == ["t1-head"]
    pod = out["pods"][0]
    resources = pod["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in str(resources)
    env = env_of(pod)
    assert env["TINKER_API_KEY"] == {"name": "TINKER_API_KEY",
                                     "valueFrom": {"secretKeyRef": {"name": "tinker", "key": "token"}}}
    assert out["services"] == []
    cm = out["configmaps"][0]
    assert "tml-operator-side-secret" not in str(out)
    shipped = yaml.safe_load(cm["data"]["config.yaml"])
    # the seed reads TRINITY_CHECKPOINT_ROOT_DIR: the pod gets the variable, the config stays the user's
    assert shipped["checkpoint_root_dir"] == seed("tinker.yaml")["checkpoint_root_dir"]
    assert env["TRINITY_CHECKPOINT_ROOT_DIR"]["value"] == "/var/lib/rft/checkpoints"
    assert pod["spec"]["containers"][0]["command"][:4] == ["rft", "run", "--config", "/etc/rft/config.yaml"]


def test_config_without_the_root_variable_gets_its_root_overridden_in_the_configmap_copy():
    config = seed("tinker.yaml")
    config["checkpoint_root_dir"] = "/somewhere/else"
    _, _, out = children(rftjob("t2", config))
    assert yaml.safe_load(out["configmaps"][0]["data"]["config.yaml"])["checkpoint_root_dir"] == \
        "/var/lib/rft/checkpoints"
    assert "TRINITY_CHECKPOINT_ROOT_DIR" not in env_of(out["pods"][0])


def test_verl_job_is_node_num_pods_each_with_gpu_per_node_and_a_headless_head_service():
    config = seed("verl-lora.yaml")
    config["cluster"] = {"node_num": 3, "gpu_per_node": 8}
    _, _, out = children(rftjob("v1", config))
    names = [p["metadata"]["name"] for p in out["pods"]]
    assert names == ["v1-head", "v1-worker-1", "v1-worker-2"]
    for pod in out["pods"]:
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    head, worker = out["pods"][0], out["pods"][1]
    assert "ray start --head" in head["spec"]["containers"][0]["command"][2]
    assert "exec rft run" in head["spec"]["containers"][0]["command"][2]
    assert "--address=v1-head:6379" in worker["spec"]["containers"][0]["command"][2]
    svc = out["services"][0]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"rft.dev/job": "v1", "rft.dev/role": "head"}
    assert yaml.safe_load(out["configmaps"][0]["data"]["config.yaml"])["cluster"]["ray_address"] == "auto"


def test_every_child_is_labelled_owned_and_locked_down():
    job = rftjob("sec", storage={"size": "5Gi"})
    _, _, out = children(job)
    objects = [o for kind in out.values() for o in kind]
    assert {o["kind"] for o in objects} == {"ConfigMap", "Pod", "PersistentVolumeClaim"}
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "rft-operator"
        assert labels["app.kubernetes.io/instance"] == "sec" and labels["rft.dev/job"] == "sec"
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref["uid"] == job["metadata"]["uid"] and ref["kind"] == "RFTJob" and ref["controller"] is True
    pod = out["pods"][0]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    ctx = pod["spec"]["containers"][0]["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"]["drop"] == ["ALL"]
    assert pod["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize("storage, claim", [
    ({}, None), ({"existingClaim": "shared"}, "shared"), ({"size": "5Gi"}, "st-storage"),
])
def test_storage_is_an_existing_claim_an_owned_claim_or_an_emptydir(storage, claim):
    _, _, out = children(rftjob("st", storage=storage))
    volume = next(v for v in out["pods"][0]["spec"]["volumes"] if v["name"] == "job-dir")
    if claim is None:
        assert volume == {"name": "job-dir", "emptyDir": {}}
    else:
        assert volume["persistentVolumeClaim"]["claimName"] == claim
    owned = [c["metadata"]["name"] for c in out["persistentvolumeclaims"]]
    assert owned == (["st-storage"] if "size" in storage else [])


def test_pod_settings_from_the_spec_reach_the_pod():
    job = rftjob(
        "knobs", image="registry.local/rft:1", imagePullPolicy="Always",
        resources={"requests": {"cpu": "2"}}, env=[{"name": "FOO", "value": "bar"}],
        envFrom=[{"configMapRef": {"name": "extra"}}], nodeSelector={"pool": "cpu"},
        tolerations=[{"key": "k", "operator": "Exists"}], priorityClassName="low", serviceAccountName="runner",
        affinity={"nodeAffinity": {}}, metrics={"port": 9500},
    )
    _, _, out = children(job)
    pod = out["pods"][0]
    c = pod["spec"]["containers"][0]
    assert c["image"] == "registry.local/rft:1" and c["imagePullPolicy"] == "Always"
    assert c["resources"] == {"requests": {"cpu": "2"}}
    assert env_of(pod)["FOO"]["value"] == "bar" and c["envFrom"] == [{"configMapRef": {"name": "extra"}}]
    assert c["ports"] == [{"name": "metrics", "containerPort": 9500}]
    assert "--metrics-port" in c["command"] and "9500" in c["command"]
    for key, value in (("nodeSelector", {"pool": "cpu"}), ("priorityClassName", "low"),
                       ("serviceAccountName", "runner"), ("affinity", {"nodeAffinity": {}})):
        assert pod["spec"][key] == value
    assert pod["spec"]["tolerations"] == [{"key": "k", "operator": "Exists"}]


def test_the_spec_hash_follows_what_shapes_the_pods_only():
    job = rftjob("h")
    spec, config, _ = children(job)
    base = spec_hash(spec, config)
    for change in ({"suspend": True}, {"backoffLimit": 7}, {"ttlSecondsAfterFinished": 5}):
        other = copy.deepcopy(job)
        other["spec"].update(change)
        s2, c2, _ = children(other)
        assert spec_hash(s2, c2) == base, change
    other = copy.deepcopy(job)
    other["spec"]["config"]["algorithm"]["optimizer"]["lr"] = 2e-5
    s2, c2, _ = children(other)
    assert spec_hash(s2, c2) != base


def test_children_are_valid_kubernetes_objects():
    config = seed("verl-lora.yaml")
    config["cluster"] = {"node_num": 2, "gpu_per_node": 4}
    for job in (rftjob("kv-t", storage={"size": "1Gi"}, tinker={"apiKeySecretRef": {"name": "s"}}),
                rftjob("kv-v", config, storage={"existingClaim": "c"})):
        spec, config_result, out = children(job)
        for obj in [o for kind in out.values() for o in kind]:
            kubernetes_validate.validate(obj, "1.30", strict=True)
        assert len(build_pods(job, spec, config_result, attempt=0)) == (2 if job is not None and
                                                                         config_result.cfg.backend == "verl" else 1)
