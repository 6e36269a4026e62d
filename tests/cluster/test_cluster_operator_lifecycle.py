"""Operator restarts and upgrades, and the operator's steady-state request count, on a real API server.

Pods are kept off every node (a nodeSelector no node has) and the test plays the kubelet by writing their
phase through the pods/status subresource, so nothing here needs a schedulable node or a pullable image.
"""

from __future__ import annotations

import pytest
import yaml
from cluster_harness import (
    GROUP,
    PLURAL,
    ROOT,
    VERSION,
    env,
    job,
    operator_for,
    raw_request,
    reconciles,
    wait_for,
)

pytestmark = pytest.mark.cluster
OLD_IMAGE, NEW_IMAGE = "ghcr.io/rft-platform/rft-runtime:0.1.0", "registry.invalid/rft-runtime:0.2.0"


def job_status(custom, ns, name):
    return custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name).get("status") or {}


def set_phase(core, ns, pod, phase):
    core.patch_namespaced_pod_status(pod, ns, {"status": {"phase": phase}})


@pytest.mark.parametrize("previous", ["0.1.0", "this release"])
def test_running_and_finished_jobs_survive_an_operator_restart_with_a_new_default_image(
        apis, namespace, monkeypatch, previous):
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "operator"))
    import release_0_1_0  # the previous release's digest, verbatim

    from rft_operator import builders, reconcile

    custom, core = apis
    with monkeypatch.context() as m:
        if previous == "0.1.0":  # the release whose digest covered the resolved default image
            m.setattr(reconcile, "spec_hash", release_0_1_0.spec_hash)
            m.setattr(builders, "spec_hash", release_0_1_0.spec_hash)
        with env(RFT_OPERATOR_DEFAULT_IMAGE=OLD_IMAGE), operator_for(namespace):
            for name in ("run", "fin"):
                custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job(name))
            for name in ("run", "fin"):
                wait_for(lambda name=name: core.read_namespaced_pod(f"{name}-head", namespace), 60, "the pod")
                set_phase(core, namespace, f"{name}-head", "Running")
            wait_for(lambda: job_status(custom, namespace, "run").get("phase") == "Running", 60, "run Running")
            wait_for(lambda: job_status(custom, namespace, "fin").get("phase") == "Running", 60, "fin Running")
            set_phase(core, namespace, "fin-head", "Succeeded")
            wait_for(lambda: job_status(custom, namespace, "fin").get("phase") == "Succeeded", 60, "fin Succeeded")
    pods = {p.metadata.name: p for p in core.list_namespaced_pod(namespace).items}
    assert pods["run-head"].spec.containers[0].image == OLD_IMAGE
    before = {n: job_status(custom, namespace, n) for n in ("run", "fin")}

    for image in (NEW_IMAGE, "mirror.invalid/rft-runtime:9"):
        with env(RFT_OPERATOR_DEFAULT_IMAGE=image), operator_for(namespace):
            wait_for(lambda: reconciles() >= 6, 60, "three passes over both jobs")
        after = {p.metadata.name: p for p in core.list_namespaced_pod(namespace).items}
        assert {n: p.metadata.uid for n, p in after.items()} == {n: p.metadata.uid for n, p in pods.items()}
        assert not any(p.metadata.deletion_timestamp for p in after.values())
        for name in ("run", "fin"):
            now = job_status(custom, namespace, name)
            assert now["phase"] == before[name]["phase"] and now["startTime"] == before[name]["startTime"]
            assert now.get("completionTime") == before[name].get("completionTime")
    reasons = {e.reason for e in core.list_namespaced_event(namespace).items}
    assert "SpecChanged" not in reasons


def test_a_multi_node_tinker_job_is_a_head_and_cpu_workers_and_a_failed_worker_is_replaced_alone(
        apis, namespace, running_operator):
    custom, core = apis
    body = job("mn")
    body["spec"]["config"]["cluster"] = {"node_num": 3}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    names = ["mn-head", "mn-worker-1", "mn-worker-2"]
    pods = {n: wait_for(lambda n=n: core.read_namespaced_pod(n, namespace), 60, f"pod {n}") for n in names}
    svc = core.read_namespaced_service("mn-head", namespace)
    assert svc.spec.cluster_ip == "None" and svc.spec.selector == {"rft.dev/job": "mn", "rft.dev/role": "head"}
    for pod in pods.values():
        rft = pod.spec.containers[0]
        asked = {**(rft.resources.limits or {}), **(rft.resources.requests or {})} if rft.resources else {}
        assert not [r for r in asked if "gpu" in r.lower()], asked
        assert "--num-gpus=0" in rft.command[2]
    env = {e.name: e.value for e in pods["mn-head"].spec.containers[0].env}
    assert env["RAY_ADDRESS"] == "127.0.0.1:6379"
    for name in names[1:]:
        rft = pods[name].spec.containers[0]
        assert "ray start --address=mn-head:6379" in rft.command[2]
        assert {e.name: e.value for e in rft.env}["RAY_ADDRESS"] == "mn-head:6379"

    for name in names:
        set_phase(core, namespace, name, "Running")
    wait_for(lambda: job_status(custom, namespace, "mn").get("workers") == "2/2", 60, "2/2 workers ready")
    code, table = raw_request(custom.api_client, "GET", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}",
                              headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    assert code == 200
    columns = [c["name"] for c in table["columnDefinitions"]]
    row = next(r for r in table["rows"] if r["object"]["metadata"]["name"] == "mn")
    assert row["cells"][columns.index("Workers")] == "2/2"

    head_uid, old_uid = pods["mn-head"].metadata.uid, pods["mn-worker-1"].metadata.uid
    set_phase(core, namespace, "mn-worker-1", "Failed")
    fresh = wait_for(lambda: (lambda p: p if p.metadata.uid != old_uid else None)(
        core.read_namespaced_pod("mn-worker-1", namespace)), 60, "the replacement of mn-worker-1")
    assert fresh.metadata.labels["rft.dev/attempt"] == "0"
    head = core.read_namespaced_pod("mn-head", namespace)
    assert head.metadata.uid == head_uid and head.status.phase == "Running"
    st = job_status(custom, namespace, "mn")
    assert st["phase"] == "Running" and st["workerRestarts"] == 1 and st.get("retries", 0) == 0
    wait_for(lambda: job_status(custom, namespace, "mn").get("workers") == "1/2", 60, "1/2 workers ready")
    events = wait_for(lambda: [e for e in core.list_namespaced_event(namespace).items
                               if e.involved_object.name == "mn" and e.reason == "WorkerRestarted"], 30, "the event")
    assert events[0].type == "Warning" and "mn-worker-1" in events[0].message


# ---- steady-state requests, counted by the API server itself

READ_WRITE_VERBS = ["get", "list", "create", "update", "patch", "delete", "deletecollection"]


def _flowcontrol_version(api_client) -> str | None:
    for version in ("v1", "v1beta3"):
        try:
            code, _ = raw_request(api_client, "GET", f"/apis/flowcontrol.apiserver.k8s.io/{version}")
        except Exception:
            continue
        if code == 200:
            return version
    return None


def _dispatched(api_client, flow_schema: str) -> float:
    """apiserver_flowcontrol_dispatched_requests_total of one flow schema, from the API server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    request = api_client.param_serialize("GET", "/metrics", header_params={"Accept": "text/plain"},
                                         auth_settings=["BearerToken"])
    response = api_client.call_api(*request)
    response.read()
    total = 0.0
    for family in text_string_to_metric_families(response.data.decode()):
        for sample in family.samples:
            if (sample.name == "apiserver_flowcontrol_dispatched_requests_total"
                    and sample.labels.get("flow_schema") == flow_schema):
                total += sample.value
    return total


@pytest.fixture()
def operator_identity(api_client, namespace, tmp_path):
    """A ServiceAccount with exactly the operator's rules in the namespace, its kubeconfig, and a FlowSchema
    that counts its reads and writes (never its watches) under a name of its own."""
    from kubernetes import client

    from rft_operator.rbac import cluster_scoped_rules, namespaced_rules

    version = _flowcontrol_version(api_client)
    if version is None:
        pytest.skip("the API server serves no flowcontrol.apiserver.k8s.io (API Priority and Fairness) API")
    core, rbac = client.CoreV1Api(api_client), client.RbacAuthorizationV1Api(api_client)
    sa = "rft-operator"
    core.create_namespaced_service_account(namespace, {"metadata": {"name": sa}})
    rbac.create_namespaced_role(namespace, {"metadata": {"name": sa}, "rules": namespaced_rules()})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": sa}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]})
    # the runtimes are cluster-scoped: read cluster-wide, as the chart grants in namespaced mode
    cluster_role = f"rft-test-{namespace}"
    rbac.create_cluster_role({"metadata": {"name": cluster_role}, "rules": cluster_scoped_rules()})
    rbac.create_cluster_role_binding({
        "metadata": {"name": cluster_role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]})
    token = core.create_namespaced_service_account_token(sa, namespace, {"spec": {"expirationSeconds": 3600}})
    conf = api_client.configuration
    cluster = {"server": conf.host}
    if conf.ssl_ca_cert:
        cluster["certificate-authority"] = conf.ssl_ca_cert
    elif not conf.verify_ssl:
        cluster["insecure-skip-tls-verify"] = True
    path = tmp_path / "operator-kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "op",
        "clusters": [{"name": "c", "cluster": cluster}], "users": [{"name": "op", "user": {"token": token.status.token}}],
        "contexts": [{"name": "op", "context": {"cluster": "c", "user": "op", "namespace": namespace}}]}))

    name = f"rft-test-{namespace}"
    base = f"/apis/flowcontrol.apiserver.k8s.io/{version}"
    level = {"apiVersion": f"flowcontrol.apiserver.k8s.io/{version}", "kind": "PriorityLevelConfiguration",
             "metadata": {"name": name}, "spec": {"type": "Limited", "limited": {
                 "nominalConcurrencyShares": 5,
                 "limitResponse": {"type": "Queue", "queuing": {"queues": 8, "handSize": 2, "queueLengthLimit": 50}}}}}
    schema = {"apiVersion": f"flowcontrol.apiserver.k8s.io/{version}", "kind": "FlowSchema", "metadata": {"name": name},
              "spec": {"priorityLevelConfiguration": {"name": name}, "matchingPrecedence": 800,
                       "distinguisherMethod": {"type": "ByUser"},
                       "rules": [{"subjects": [{"kind": "ServiceAccount",
                                                "serviceAccount": {"name": sa, "namespace": namespace}}],
                                  "resourceRules": [{"verbs": READ_WRITE_VERBS, "apiGroups": ["*"],
                                                     "resources": ["*"], "namespaces": ["*"],
                                                     "clusterScope": True}]}]}}
    for path_, body in ((f"{base}/prioritylevelconfigurations", level), (f"{base}/flowschemas", schema)):
        code, answer = raw_request(api_client, "POST", path_, body=body, headers={"Content-Type": "application/json"})
        assert code in (200, 201), answer
    try:
        yield path, name
    finally:
        for kind in ("flowschemas", "prioritylevelconfigurations"):
            try:
                raw_request(api_client, "DELETE", f"{base}/{kind}/{name}")
            except Exception:  # cleanup is best effort; the objects name the test namespace
                pass
        rbac.delete_cluster_role_binding(cluster_role)
        rbac.delete_cluster_role(cluster_role)


def test_at_steady_state_the_operator_sends_no_reads_or_writes(api_client, apis, namespace, operator_identity):
    custom, core = apis
    kubeconfig, flow = operator_identity
    for i in range(3):
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job(f"quiet-{i}"))
    start = _dispatched(api_client, flow)
    with env(KUBECONFIG=str(kubeconfig), RFT_OPERATOR_RESYNC_SECONDS="2"), operator_for(namespace):
        for i in range(3):
            wait_for(lambda i=i: core.read_namespaced_pod(f"quiet-{i}-head", namespace), 60, "the pods")
            wait_for(lambda i=i: job_status(custom, namespace, f"quiet-{i}").get("reason") == "PodsPending", 60,
                     "the jobs to settle (PodsPending: no node matches)")
        def quiet() -> bool:
            """No request counted over three more passes: the last writes' own watch events came back."""
            before, passes = _dispatched(api_client, flow), reconciles()
            wait_for(lambda: reconciles() >= passes + 3, 30, "three passes")
            return _dispatched(api_client, flow) == before

        wait_for(quiet, 60, "the operator's writes to settle")
        settled = _dispatched(api_client, flow)
        if settled <= start:
            pytest.skip("this API server's /metrics does not count the operator's requests (several API servers "
                        "behind a load balancer); the kmock test checks the same in CI")
        passes = reconciles()
        wait_for(lambda: reconciles() >= passes + 3 * 3, 60, "three resyncs of the three jobs")
        assert _dispatched(api_client, flow) == settled, "reads or writes at steady state"
