"""The chart on a real cluster (skipped when KUBECONFIG names none): install, RBAC as the API server decides it,
CRD upgrade, uninstall. Needs permission to create CRDs, ClusterRoles and SubjectAccessReviews (cluster-admin).

The operator image need not be pullable: nothing here waits for the pod to run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

import pytest
import yaml
from chartkit import CHART, find_helm

pytestmark = pytest.mark.cluster
CRD_NAME = "rftjobs.rft.dev"
CRD_NAMES = (CRD_NAME, "clusterrftruntimes.rft.dev")


@pytest.fixture()
def cluster_helm(tmp_path):
    """(run helm, kubernetes ApiClient, namespace): a fresh namespace, deleted afterwards with the release."""
    if not os.environ.get("KUBECONFIG"):
        pytest.skip("KUBECONFIG is not set: no cluster to test against")
    helm, why = find_helm()
    if not helm:
        pytest.skip(f"no helm binary: {why}")
    from kubernetes import client, config

    try:
        api_client = config.new_client_from_config(config_file=os.environ["KUBECONFIG"].split(os.pathsep)[0])
        client.VersionApi(api_client).get_code(_request_timeout=10)
    except Exception as exc:  # any reason the cluster cannot be reached is a reason to skip
        pytest.skip(f"the cluster KUBECONFIG names is not reachable: {exc}")
    core = client.CoreV1Api(api_client)
    namespace = f"rft-chart-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace,
                                        "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    env = {**os.environ, "HELM_CONFIG_HOME": str(tmp_path / "c"), "HELM_CACHE_HOME": str(tmp_path / "k"),
           "HELM_DATA_HOME": str(tmp_path / "d")}

    def run(*args: str) -> str:
        proc = subprocess.run([helm, *args, "--namespace", namespace], env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stderr}"
        return proc.stdout

    try:
        yield run, api_client, namespace
    finally:
        subprocess.run([helm, "uninstall", "rft", "--namespace", namespace], env=env, capture_output=True,
                       timeout=300)
        core.delete_namespace(namespace)


def _allowed(api_client, sa: str, namespace: str, group: str, resource: str, verb: str,
             subresource: str = "", where: str = "some-team", name: str = "") -> bool:
    from kubernetes import client

    review = client.AuthorizationV1Api(api_client).create_subject_access_review({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": f"system:serviceaccount:{namespace}:{sa}",
                 "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                 "resourceAttributes": {"group": group, "resource": resource, "subresource": subresource,
                                        "verb": verb, "namespace": where, "name": name}}})
    return bool(review.status.allowed)


def test_install_grants_exactly_the_operators_rules_and_upgrade_updates_the_crd(cluster_helm, tmp_path):
    from kubernetes import client

    from rft_operator.rbac import required_rules

    helm, api_client, namespace = cluster_helm
    ext = client.ApiextensionsV1Api(api_client)
    preexisting = []
    for name in CRD_NAMES:
        try:
            ext.read_custom_resource_definition(name)
            preexisting.append(name)
        except client.exceptions.ApiException as err:
            assert err.status == 404
    crd_preexists = bool(preexisting)
    install_crd = "false" if crd_preexists else "true"
    helm("install", "rft", str(CHART), "--set", f"crds.install={install_crd}")
    sa = "rft-operator"

    # the namespace enforces the restricted Pod Security Standard: the pod is admitted, or never appears
    core = client.CoreV1Api(api_client)
    deadline = time.monotonic() + 90
    while not core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/component=operator").items:
        assert time.monotonic() < deadline, "no operator pod was admitted in a restricted namespace"
        time.sleep(2)

    for rule in required_rules():
        resource, _, sub = rule["resources"][0].partition("/")
        for verb in rule["verbs"]:
            assert _allowed(api_client, sa, namespace, rule["apiGroups"][0], resource, verb, sub), (rule, verb)
    # and no more: things a compromised operator must not be able to do
    for group, resource, verb, sub in (("", "secrets", "get", ""), ("", "secrets", "list", ""),
                                       ("", "pods", "create", "exec"), ("rft.dev", "rftjobs", "delete", ""),
                                       ("rft.dev", "rftjobs", "create", ""), ("apps", "deployments", "create", ""),
                                       ("rbac.authorization.k8s.io", "clusterroles", "create", "")):
        assert not _allowed(api_client, sa, namespace, group, resource, verb, sub), (resource, verb, sub)

    # leader election: the release's own Lease in the release namespace, and nothing else
    (deployment,) = client.AppsV1Api(api_client).list_namespaced_deployment(namespace).items
    lease = {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}["RFT_OPERATOR_LEASE_NAME"]
    for verb in ("get", "patch"):
        assert _allowed(api_client, sa, namespace, "coordination.k8s.io", "leases", verb, where=namespace,
                        name=lease), verb
        assert not _allowed(api_client, sa, namespace, "coordination.k8s.io", "leases", verb, where=namespace,
                            name="kube-scheduler"), verb
    assert _allowed(api_client, sa, namespace, "coordination.k8s.io", "leases", "create", where=namespace)
    assert not _allowed(api_client, sa, namespace, "coordination.k8s.io", "leases", "patch", name=lease)

    if crd_preexists:
        pytest.skip(f"{', '.join(preexisting)} existed before the test: not upgrading or uninstalling a CRD it "
                    "did not install")
    changed = tmp_path / "rft-operator"
    shutil.copytree(CHART, changed)
    crd_file = changed / "files" / "crds" / "rftjob.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    for version in crd["spec"]["versions"]:
        version.setdefault("additionalPrinterColumns", []).append(
            {"name": "Upgraded", "type": "string", "jsonPath": ".status.phase"})
    crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))
    helm("upgrade", "rft", str(changed))
    deadline = time.monotonic() + 30
    while True:
        served = ext.read_custom_resource_definition(CRD_NAME)
        columns = [c.name for c in served.spec.versions[0].additional_printer_columns or []]
        if "Upgraded" in columns:
            break
        assert time.monotonic() < deadline, columns
        time.sleep(1)

    helm("uninstall", "rft")
    for name in CRD_NAMES:
        assert ext.read_custom_resource_definition(name)  # kept: helm.sh/resource-policy: keep
        ext.delete_custom_resource_definition(name)  # this test created it


def _user_may(api_client, user: str, namespace: str, verb: str, subresource: str = "") -> bool:
    from kubernetes import client

    review = client.AuthorizationV1Api(api_client).create_subject_access_review({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": ["system:authenticated"],
                 "resourceAttributes": {"group": "rft.dev", "resource": "rftjobs", "subresource": subresource,
                                        "verb": verb, "namespace": namespace}}})
    return bool(review.status.allowed)


def test_namespace_users_with_the_builtin_edit_and_view_roles_get_rftjobs(cluster_helm):
    """The aggregated roles reach admin/edit/view through the controller manager's aggregation controller."""
    from kubernetes import client

    helm, api_client, namespace = cluster_helm
    rbac = client.RbacAuthorizationV1Api(api_client)
    for name in ("rft-rftjob-edit", "rft-rftjob-view", "rft-runtime-view", "rft-runtime-admin"):
        try:
            rbac.read_cluster_role(name)
            pytest.skip(f"ClusterRole {name} exists already (another release owns it)")
        except client.exceptions.ApiException as err:
            assert err.status == 404
    # no CRD and no operator RBAC needed: a SubjectAccessReview asks the authorizer only
    helm("install", "rft", str(CHART), "--set", "crds.install=false", "--set", "rbac.create=false")
    editor, viewer, stranger = (f"rft-test-{who}-{namespace}" for who in ("editor", "viewer", "stranger"))
    for user, role in ((editor, "edit"), (viewer, "view")):
        rbac.create_namespaced_role_binding(namespace, {
            "metadata": {"name": f"{role}-{user}"[:63]},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})
    deadline = time.monotonic() + 60
    while not (_user_may(api_client, editor, namespace, "create") and _user_may(api_client, viewer, namespace, "list")):
        assert time.monotonic() < deadline, "the built-in edit/view roles never aggregated the rft-rftjob roles"
        time.sleep(2)
    for verb in ("create", "patch", "delete", "get", "list", "watch"):
        assert _user_may(api_client, editor, namespace, verb), verb
    assert not _user_may(api_client, editor, namespace, "patch", "status")
    assert not _user_may(api_client, viewer, namespace, "create")
    assert not _user_may(api_client, stranger, namespace, "get")
    assert not _user_may(api_client, editor, "kube-system", "create"), "the binding is per namespace"

    # ClusterRFTRuntimes: every user may read them, only the platform team (rft-runtime-admin) writes them
    platform = f"rft-test-platform-{namespace}"
    rbac.create_cluster_role_binding({
        "metadata": {"name": platform},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "rft-runtime-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": platform}]})
    try:
        for user in (editor, viewer, stranger):
            for verb in ("get", "list", "watch"):
                assert _user_may_runtimes(api_client, user, verb), (user, verb)
            for verb in ("create", "patch", "delete"):
                assert not _user_may_runtimes(api_client, user, verb), (user, verb)
        for verb in ("create", "patch", "update", "delete"):
            assert _user_may_runtimes(api_client, platform, verb), verb
    finally:
        rbac.delete_cluster_role_binding(platform)


def _user_may_runtimes(api_client, user: str, verb: str) -> bool:
    from kubernetes import client

    review = client.AuthorizationV1Api(api_client).create_subject_access_review({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": ["system:authenticated"],
                 "resourceAttributes": {"group": "rft.dev", "resource": "clusterrftruntimes", "verb": verb}}})
    return bool(review.status.allowed)
