"""The operator and the CRD against a real API server (skipped when KUBECONFIG names none)."""

from __future__ import annotations

import copy
import json

import pytest
from cluster_harness import GROUP, PLURAL, VERSION, example, operator_for, raw_request, wait_for

pytestmark = pytest.mark.cluster


def job_status(custom, ns, name):
    return custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name).get("status") or {}


def test_the_api_server_rejects_malformed_rftjobs_with_422(apis, namespace):
    from kubernetes.client.exceptions import ApiException

    custom, _ = apis
    cases = []
    body = example("tinker.yaml", "bad-batch")
    body["spec"]["config"]["buffer"]["batch_size"] = "lots"
    cases.append(body)
    body = example("tinker.yaml", "bad-backoff")
    body["spec"]["backoffLimit"] = -1
    cases.append(body)
    body = example("tinker.yaml", "both-sources")
    body["spec"]["configFrom"] = {"configMapKeyRef": {"name": "x"}}
    cases.append(body)
    body = example("tinker.yaml", "a" * 51)
    cases.append(body)
    paths = ["spec.config.buffer.batch_size", "spec.backoffLimit", "spec", "metadata.name"]
    for body, path in zip(cases, paths, strict=True):
        with pytest.raises(ApiException) as info:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        assert info.value.status == 422, (body["metadata"]["name"], info.value.body)
        # every error names its field (the API server's own line about skipped CEL rules aside)
        assert f"{path}:" in info.value.body, info.value.body
    assert "metadata.name: Too long: may not be longer than 50" in info.value.body


@pytest.mark.parametrize("where", [("buffer", "bach_size"), ("algorithm", "optimizer", "learning_rate"),
                                   ("explorer", "rollout_model", "gpu_memory_utilisation")])
def test_an_unknown_key_in_the_config_is_refused_at_apply_with_its_path(apis, namespace, where):
    """Under strict field validation (kubectl's default since 1.27) the server refuses an unknown key; a
    client that asks for none gets it pruned, with a warning."""
    from kubernetes.client.exceptions import ApiException

    custom, _ = apis
    body = example("tinker.yaml", "typo")
    node = body["spec"]["config"]
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = 1
    with pytest.raises(ApiException) as info:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, field_validation="Strict")
    assert info.value.status == 400
    message = json.loads(info.value.body)["message"]
    assert f'unknown field "spec.config.{".".join(where)}"' in message, message


def test_status_is_a_subresource_the_main_resource_cannot_write(apis, namespace):
    custom, _ = apis
    body = example("tinker.yaml", "sub")
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "sub",
                                          {"status": {"phase": "Running"}})
    assert job_status(custom, namespace, "sub").get("phase") is None
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "sub",
                                                 {"status": {"phase": "Running", "retries": 0}})
    got = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "sub")
    assert got["status"]["phase"] == "Running" and got["spec"] == body["spec"]


def test_tinker_job_gets_one_gpu_free_pod_with_the_key_from_the_secret(apis, namespace, running_operator):
    custom, core = apis
    body = example("tinker.yaml", "tk")
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    pod = wait_for(lambda: core.read_namespaced_pod("tk-head", namespace), 60, "the pod")
    container = pod.spec.containers[0]
    limits = (container.resources.limits or {}) if container.resources else {}
    assert "nvidia.com/gpu" not in limits
    key = next(e for e in container.env if e.name == "TINKER_API_KEY")
    assert key.value is None and key.value_from.secret_key_ref.name == "tinker-api-key"
    assert core.read_namespaced_config_map("tk-config", namespace).data["config.yaml"]
    st = wait_for(lambda: job_status(custom, namespace, "tk").get("phase"), 60, "a phase")
    assert st in ("Pending", "Running")
    # a second operator (a restart) must not create anything again
    uid = pod.metadata.uid
    with operator_for(namespace):
        wait_for(lambda: job_status(custom, namespace, "tk").get("observedGeneration"), 30, "a status")
    pods = core.list_namespaced_pod(namespace, label_selector="rft.dev/job=tk").items
    assert [p.metadata.uid for p in pods] == [uid]
    got = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "tk")
    assert got["spec"] == body["spec"]
    # what `kubectl get rftjobs` prints: the printer columns of the CRD, filled from status
    code, table = raw_request(custom.api_client, "GET", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}",
                              headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    assert code == 200
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert {"Phase", "Backend", "Algorithm", "Step", "Reward", "Started", "Age"} <= set(columns)
    row = next(r for r in table["rows"] if r["object"]["metadata"]["name"] == "tk")
    assert row["cells"][columns.index("Backend")] == "tinker"


def test_verl_job_asks_for_gpus_and_gets_a_headless_service(apis, namespace, running_operator):
    custom, core = apis
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, example("verl.yaml", "vl"))
    pod = wait_for(lambda: core.read_namespaced_pod("vl-head", namespace), 60, "the pod")
    assert str(pod.spec.containers[0].resources.limits["nvidia.com/gpu"]) == "8"
    svc = wait_for(lambda: core.read_namespaced_service("vl-head", namespace), 60, "the service")
    assert svc.spec.cluster_ip == "None"


def test_invalid_config_fails_with_a_warning_event_and_no_children(apis, namespace, running_operator):
    custom, core = apis
    body = example("tinker.yaml", "bad")
    body["spec"]["config"]["algorithm"]["algorithm_type"] = "no-such-algorithm"
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    st = wait_for(lambda: (lambda s: s if s.get("phase") == "Failed" else None)(job_status(custom, namespace, "bad")),
                  60, "Failed")
    assert st["reason"] == "InvalidConfig" and "algorithm" in st["message"]
    events = wait_for(lambda: [e for e in core.list_namespaced_event(namespace).items
                               if e.involved_object.name == "bad" and e.reason == "InvalidConfig"], 30, "the event")
    assert events[0].type == "Warning"
    assert core.list_namespaced_pod(namespace, label_selector="rft.dev/job=bad").items == []


def test_suspend_resume_and_garbage_collection_after_delete(apis, namespace, running_operator):
    custom, core = apis
    body = example("tinker.yaml", "gc")
    body["spec"].pop("storage")
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    wait_for(lambda: core.read_namespaced_pod("gc-head", namespace), 60, "the pod")
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gc", {"spec": {"suspend": True}})
    wait_for(lambda: job_status(custom, namespace, "gc").get("phase") == "Suspended", 60, "Suspended")
    wait_for(lambda: not core.list_namespaced_pod(namespace, label_selector="rft.dev/job=gc").items, 120,
             "the pod to go")
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gc", {"spec": {"suspend": False}})
    wait_for(lambda: core.list_namespaced_pod(namespace, label_selector="rft.dev/job=gc").items, 60,
             "the pod to come back")
    assert job_status(custom, namespace, "gc")["phase"] != "Suspended" or wait_for(
        lambda: job_status(custom, namespace, "gc")["phase"] != "Suspended", 30, "not Suspended")
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gc")
    wait_for(lambda: not core.list_namespaced_config_map(namespace, label_selector="rft.dev/job=gc").items, 120,
             "garbage collection of the ConfigMap")
    wait_for(lambda: not core.list_namespaced_pod(namespace, label_selector="rft.dev/job=gc").items, 120,
             "garbage collection of the pods")


def test_server_side_apply_of_the_example_is_accepted(apis, namespace):
    custom, _ = apis
    body = copy.deepcopy(example("tinker.yaml", "ssa"))
    body["metadata"]["namespace"] = namespace
    code, answer = raw_request(custom.api_client, "PATCH",
                               f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/ssa",
                               headers={"Content-Type": "application/apply-patch+yaml"},
                               params=[("fieldManager", "rft-tests")], body=body)
    assert code in (200, 201), answer
    assert custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "ssa")["spec"] == body["spec"]


def test_a_pod_template_mounts_a_users_claim_and_the_crd_refuses_one_that_takes_the_runtimes_command(
        apis, namespace, running_operator):
    from kubernetes.client.exceptions import ApiException

    custom, core = apis
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "tasks"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    body = example("tinker.yaml", "tpl")
    body["spec"]["podTemplate"] = {
        "metadata": {"annotations": {"example.com/owner": "team-rl"}},
        "spec": {"volumes": [{"name": "tasks", "persistentVolumeClaim": {"claimName": "tasks"}}],
                 "containers": [{"name": "rft", "volumeMounts": [{"name": "tasks", "mountPath": "/data"}]},
                                {"name": "sidecar", "image": "busybox:1.36", "command": ["sleep", "infinity"]}]}}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    pod = wait_for(lambda: core.read_namespaced_pod("tpl-head", namespace), 60, "the pod")
    claims = {v.name: v.persistent_volume_claim.claim_name for v in pod.spec.volumes if v.persistent_volume_claim}
    assert claims.get("tasks") == "tasks"
    runtime = next(c for c in pod.spec.containers if c.name == "rft")
    assert {m.mount_path for m in runtime.volume_mounts} >= {"/data", "/etc/rft", "/var/lib/rft"}
    assert runtime.command[:2] == ["rft", "run"] and [c.name for c in pod.spec.containers] == ["rft", "sidecar"]
    assert pod.metadata.annotations["example.com/owner"] == "team-rl"

    bad = example("tinker.yaml", "tpl-bad")
    bad["spec"]["podTemplate"] = {"spec": {"containers": [{"name": "rft", "command": ["sleep", "infinity"]}]}}
    with pytest.raises(ApiException) as info:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, bad)
    assert info.value.status == 422 and "command, args and image belong to the operator" in info.value.body


def test_a_pod_the_api_server_refuses_fails_the_job_with_invalid_spec(apis, namespace, running_operator):
    custom, core = apis
    body = example("tinker.yaml", "typo")
    # a sidecar without an image passes the CRD (the PodSpec is not spelled out there) but not pod validation
    body["spec"]["podTemplate"] = {"spec": {"containers": [{"name": "sidecar"}]}}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    st = wait_for(lambda: (lambda s: s if s.get("phase") == "Failed" else None)(job_status(custom, namespace, "typo")),
                  60, "Failed")
    assert st["reason"] == "InvalidSpec" and "image" in st["message"]
    assert core.list_namespaced_pod(namespace, label_selector="rft.dev/job=typo").items == []


def _example_docs() -> list[dict]:
    import yaml
    from cluster_harness import ROOT

    return [doc for path in sorted((ROOT / "examples" / "rftjobs").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_every_rftjob_example_is_applied_as_is_with_strict_field_validation(apis, namespace):
    """What `kubectl apply --server-side -f examples/rftjobs/` sends, one object at a time."""
    custom, _ = apis
    docs = _example_docs()
    assert len(docs) >= 5 and all(d["kind"] == "RFTJob" for d in docs)
    for doc in docs:
        name = doc["metadata"]["name"]
        code, answer = raw_request(custom.api_client, "PATCH",
                                   f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}",
                                   headers={"Content-Type": "application/apply-patch+yaml"},
                                   params=[("fieldManager", "kubectl"), ("fieldValidation", "Strict")], body=doc)
        assert code in (200, 201), (name, answer)
    stored = {j["metadata"]["name"]: j for j in custom.list_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                                      PLURAL)["items"]}
    assert {d["metadata"]["name"] for d in docs} == set(stored)
    for doc in docs:  # nothing pruned: every key of every example is in the schema
        assert stored[doc["metadata"]["name"]]["spec"] == doc["spec"]


def test_kubectl_apply_on_the_rftjob_examples_folder_applies_every_file(api_client, namespace):
    import os
    import shutil
    import subprocess

    from cluster_harness import ROOT

    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("no kubectl on PATH; the test above sends what it would, through the API")
    proc = subprocess.run([kubectl, "--kubeconfig", os.environ["KUBECONFIG"].split(os.pathsep)[0], "-n", namespace,
                           "apply", "-f", str(ROOT / "examples" / "rftjobs")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    created = sorted(line.split()[0] for line in proc.stdout.splitlines() if line.endswith(" created"))
    assert created == sorted(f"rftjob.rft.dev/{d['metadata']['name']}" for d in _example_docs()), proc.stdout
