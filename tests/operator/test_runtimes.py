"""Platform runtimes and RayClusters, the pure parts: which runtime applies, how a job's spec lies over it,
and when a KubeRay RayCluster counts as ready."""

from __future__ import annotations

import pytest
from rftjob_bodies import rftjob, seed

from rft_operator import raycluster
from rft_operator.builders import build_pods, spec_issues
from rft_operator.jobconfig import prepare_config
from rft_operator.runtimes import DEFAULT_ANNOTATION, RuntimeStore, select
from rft_operator.spec import parse_spec


def runtime(name, spec, default=False, created="2027-01-01T00:00:00Z"):
    meta = {"name": name, "creationTimestamp": created}
    if default:
        meta["annotations"] = {DEFAULT_ANNOTATION: "true"}
    return {"metadata": meta, "spec": spec}


def test_a_named_runtime_the_default_and_a_missing_one():
    store = RuntimeStore()
    store.replace_all([runtime("a", {}), runtime("old", {}, True, "2027-01-01T00:00:00Z"),
                       runtime("new", {}, True, "2027-02-01T00:00:00Z")])
    assert select({"runtimeRef": {"name": "a"}}, store)[0].name == "a"
    assert select({}, store)[0].name == "new"  # the newest default, as Kubernetes picks a StorageClass
    found, why = select({"runtimeRef": {"name": "nope"}}, store)
    assert found is None and "ClusterRFTRuntime nope (spec.runtimeRef.name) does not exist" in why
    store.forget("new")
    assert select({}, store)[0].name == "old"
    assert select({}, RuntimeStore()) == (None, None)


def test_the_jobs_own_fields_win_and_maps_merge_key_by_key():
    store = RuntimeStore()
    store.put(runtime("rt", {
        "image": "reg/rft:platform", "verlImage": "reg/rft:platform-verl", "imagePullPolicy": "Always",
        "nodeSelector": {"pool": "cpu", "zone": "a"}, "resources": {"requests": {"cpu": "2", "memory": "4Gi"}},
        "tolerations": [{"key": "dedicated", "operator": "Exists"}], "priorityClassName": "batch",
        "gpus": {"resourceName": "amd.com/gpu"}, "kueue": {"queueName": "q", "priorityClass": "low"},
        "podTemplate": {"metadata": {"labels": {"team": "platform"}}}}))
    job = rftjob("j", runtimeRef={"name": "rt"}, nodeSelector={"pool": "big"}, imagePullPolicy="IfNotPresent",
                 resources={"requests": {"memory": "8Gi"}}, tolerations=[{"key": "mine", "operator": "Exists"}])
    spec = parse_spec(job["spec"], runtime=select(job["spec"], store)[0])
    config = prepare_config(job["spec"]["config"], spec, job_name="j", namespace="default")
    (pod,) = build_pods(job, spec, config, attempt=0)
    rft = pod["spec"]["containers"][0]
    assert rft["image"] == "reg/rft:platform" and rft["imagePullPolicy"] == "IfNotPresent"
    assert pod["spec"]["nodeSelector"] == {"pool": "big", "zone": "a"}
    assert rft["resources"]["requests"] == {"cpu": "2", "memory": "8Gi"}
    assert [t["key"] for t in pod["spec"]["tolerations"]] == ["dedicated", "mine"]
    assert pod["spec"]["priorityClassName"] == "batch"
    assert pod["metadata"]["labels"]["team"] == "platform"
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "q"
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "low"
    # the job's own queue label wins over the runtime's queue
    labelled = rftjob("k", runtimeRef={"name": "rt"})
    labelled["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "mine"}
    (pod,) = build_pods(labelled, spec, config, attempt=0)
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "mine"
    # the runtime's GPU resource is for veRL jobs: a Tinker job is not refused for it
    assert spec_issues(job, spec, config) == []
    # the digest covers the job's own spec: a runtime's new values restart nothing
    store.put(runtime("rt", {"image": "reg/rft:platform-2"}))
    again = parse_spec(job["spec"], runtime=select(job["spec"], store)[0])
    from rft_operator.builders import spec_hash

    assert spec_hash(again, config) == spec_hash(spec, config)


def test_a_runtime_pod_template_that_takes_what_the_operator_owns_is_refused_naming_the_runtime():
    store = RuntimeStore()
    store.put(runtime("bad", {"podTemplate": {"spec": {"restartPolicy": "Always"}}}))
    job = rftjob("j", runtimeRef={"name": "bad"})
    spec = parse_spec(job["spec"], runtime=select(job["spec"], store)[0])
    config = prepare_config(job["spec"]["config"], spec, job_name="j", namespace="default")
    (issue,) = spec_issues(job, spec, config)
    assert issue.startswith("ClusterRFTRuntime bad spec.podTemplate.spec.restartPolicy belongs to the operator")


@pytest.mark.parametrize("body, ok, says", [
    ({}, False, "KubeRay has not reported its state yet"),
    ({"status": {"state": "ready"}}, True, "its state is ready"),
    ({"status": {"state": "unhealthy"}}, False, "its state is unhealthy"),
    ({"status": {"state": "ready", "conditions": [{"type": "HeadPodReady", "status": "False",
                                                   "reason": "HeadPodNotFound"}]}}, False,
     "HeadPodReady is False: HeadPodNotFound"),
    ({"status": {"conditions": [{"type": "HeadPodReady", "status": "True"}]}}, True, "its head pod is ready"),
    ({"spec": {"suspend": True}, "status": {"state": "ready"}}, False, "it is suspended"),
    ({"status": {"state": "ready", "conditions": [{"type": "RayClusterSuspended", "status": "True"}]}}, False,
     "it is suspended"),
])
def test_when_a_raycluster_is_ready(body, ok, says):
    assert raycluster.ready(body) == (ok, says)


def test_a_job_on_a_raycluster_is_one_pod_joining_it_and_what_is_refused_with_it():
    config_data = {**seed("tinker.yaml"), "cluster": {"node_num": 4}}
    job = rftjob("onray", config_data, rayClusterRef={"name": "shared"})
    spec = parse_spec(job["spec"])
    config = prepare_config(job["spec"]["config"], spec, job_name="onray", namespace="default")
    (pod,) = build_pods(job, spec, config, attempt=0)
    script = pod["spec"]["containers"][0]["command"][2]
    assert "ray start --address=shared-head-svc:6379 --num-cpus=0 --num-gpus=0" in script
    assert {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}["RAY_ADDRESS"] == \
        "shared-head-svc:6379"
    for extra, says in (({"env": [{"name": "RAY_ADDRESS", "value": "x:1"}]}, "spec.env RAY_ADDRESS"),
                        ({"roleTemplates": {"worker": {"spec": {}}}}, "spec.roleTemplates.worker")):
        bad = rftjob("onray", config_data, rayClusterRef={"name": "shared"}, **extra)
        bad_spec = parse_spec(bad["spec"])
        issues = spec_issues(bad, bad_spec, prepare_config(config_data, bad_spec, job_name="onray",
                                                           namespace="default"))
        assert [i for i in issues if i.startswith(says)], issues
    verl = rftjob("v", {**seed("verl-lora.yaml"), "cluster": {"node_num": 1, "gpu_per_node": 1}},
                  rayClusterRef={"name": "shared"})
    verl_spec = parse_spec(verl["spec"])
    issues = spec_issues(verl, verl_spec, prepare_config(verl["spec"]["config"], verl_spec, job_name="v",
                                                         namespace="default"))
    assert ["spec.rayClusterRef applies to Tinker jobs only" in i for i in issues] == [True]
