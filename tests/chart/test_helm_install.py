"""`helm install`, `helm upgrade` with a changed CRD, and `helm uninstall`, by a real helm against an API server.

The server is kmock (no real API server runs on these machines; tests/cluster covers real clusters). helm runs
with --server-side=false because kmock accepts and ignores server-side apply, and with
--disable-openapi-validation because kmock serves no OpenAPI document (the chart tests validate the same objects
against the Kubernetes schemas offline). kmock_gateway.py lists the two protocol gaps it bridges.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from chartkit import CHART, NAMESPACE, RELEASE, find_helm

pytest.importorskip("kmock")
from kmock_gateway import EmulatedCluster  # noqa: E402

PLURALS = {"Role": "roles", "RoleBinding": "rolebindings", "ServiceAccount": "serviceaccounts", "Service": "services", "Deployment": "deployments",
           "ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings",
           "CustomResourceDefinition": "customresourcedefinitions"}
HELM_FLAGS = ("--namespace", NAMESPACE, "--server-side=false", "--disable-openapi-validation")
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/rftjobs.rft.dev"


def _path(obj: dict) -> str:
    group_version = obj["apiVersion"]
    base = f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"
    namespace = obj["metadata"].get("namespace")
    if namespace:
        base += f"/namespaces/{namespace}"
    return f"{base}/{PLURALS[obj['kind']]}/{obj['metadata']['name']}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmulatedCluster, dict[str, str]]]:
    """An emulated API server and the environment that points helm at it (its own config and cache dirs)."""
    helm, why = find_helm()
    if not helm:
        pytest.skip(f"no helm binary: {why}")
    home = tmp_path_factory.mktemp("helm-home")
    server = EmulatedCluster().start()
    try:
        kubeconfig = home / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": server.url}}],
            "users": [{"name": "kmock", "user": {"token": "test"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
        }))
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HELM_BIN": helm,
               "HELM_CONFIG_HOME": str(home / "config"), "HELM_CACHE_HOME": str(home / "cache"),
               "HELM_DATA_HOME": str(home / "data")}
        env.pop("HELM_DRIVER", None)
        yield server, env
    finally:
        server.stop()


def _helm(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([env["HELM_BIN"], *args], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stderr}"
    return proc.stdout


def _changed_chart(tmp_path: Path) -> tuple[Path, str]:
    """A copy of the chart whose CRD has one more printer column, as the next release would."""
    chart = tmp_path / "rft-operator"
    shutil.copytree(CHART, chart)
    crd_file = chart / "files" / "crds" / "rftjob.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    column = {"name": "Upgraded", "type": "string", "jsonPath": ".status.phase"}
    for version in crd["spec"]["versions"]:
        version.setdefault("additionalPrinterColumns", []).append(column)
    crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))
    return chart, column["name"]


def test_install_upgrade_uninstall(cluster, render, tmp_path):
    server, env = cluster
    out = _helm(env, "install", RELEASE, str(CHART), *HELM_FLAGS)
    assert "STATUS: deployed" in out

    rendered = render()
    for obj in rendered:
        stored = server.get(_path(obj))
        assert stored is not None, f"{obj['kind']} {obj['metadata']['name']} was not created"
        assert stored["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE
    crd = server.get(CRD_PATH)
    chart_crd = next(o for o in rendered if o["kind"] == "CustomResourceDefinition"
                     and o["metadata"]["name"] == "rftjobs.rft.dev")
    assert crd["spec"]["versions"] == chart_crd["spec"]["versions"]
    role = next(o for o in rendered if o["kind"] == "ClusterRole")
    assert server.get(_path(role))["rules"] == role["rules"]

    # the next chart version changes the CRD: `helm upgrade` must carry the change to the server
    changed, column = _changed_chart(tmp_path)
    out = _helm(env, "upgrade", RELEASE, str(changed), *HELM_FLAGS)
    assert "REVISION: 2" in out
    crd = server.get(CRD_PATH)
    for version in crd["spec"]["versions"]:
        assert column in [c["name"] for c in version["additionalPrinterColumns"]]
    assert "REVISION: 2" in _helm(env, "status", RELEASE, "--namespace", NAMESPACE)

    # uninstall removes the operator but keeps the CRD (and so every RFTJob): helm.sh/resource-policy: keep
    _helm(env, "uninstall", RELEASE, "--namespace", NAMESPACE)
    for obj in rendered:
        if obj["kind"] != "CustomResourceDefinition":
            assert server.get(_path(obj)) is None, f"{obj['kind']} {obj['metadata']['name']} survived uninstall"
    assert server.get(CRD_PATH) is not None


def test_namespaced_install_grants_roles_only_in_the_watched_namespaces(cluster, render, values_file):
    server, env = cluster
    values = {"rbac": {"scope": "namespaced"}, "watchNamespaces": ["team-a", "team-b"], "crds": {"install": False}}
    _helm(env, "install", RELEASE, str(CHART), *HELM_FLAGS, *values_file(values))
    try:
        rendered = render(values)
        assert {o["kind"] for o in rendered} >= {"Role", "RoleBinding"}
        for obj in rendered:
            assert server.get(_path(obj)) is not None, f"{obj['kind']} {obj['metadata']} was not created"
        for kind in ("clusterroles", "clusterrolebindings"):
            assert server.get(f"/apis/rbac.authorization.k8s.io/v1/{kind}/rft-operator") is None
        roles = [server.get(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/rft-operator")
                 for ns in ("team-a", "team-b")]
        assert all(role and role["rules"] for role in roles)
    finally:
        _helm(env, "uninstall", RELEASE, "--namespace", NAMESPACE)
    assert server.get("/apis/rbac.authorization.k8s.io/v1/namespaces/team-a/roles/rft-operator") is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_deployments_command_runs_and_answers_its_probes(cluster, render, tmp_path):
    """`rft-operator` with exactly the chart's command, args and env serves the liveness and metrics ports.

    Only the listen address changes: the pod listens on 0.0.0.0, a test on this machine only on loopback.
    """
    server, _env = cluster
    health, metrics = _free_port(), _free_port()
    values = {"health": {"port": health}, "metrics": {"port": metrics, "service": {"port": metrics}}}
    container = next(o for o in render(values) if o["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"][0]
    command = [arg.replace("0.0.0.0", "127.0.0.1") for arg in container["command"] + container["args"]]
    pod_env = {e["name"]: e["value"].replace("0.0.0.0", "127.0.0.1") for e in container["env"] if "value" in e}
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": server.kmock_url}}],
        "users": [{"name": "kmock", "user": {"token": "test"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
    }))
    env = {**os.environ, **pod_env, "HOME": str(tmp_path), "KUBECONFIG": str(kubeconfig)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    executable = shutil.which(command[0]) or pytest.skip(f"{command[0]} is not on PATH (pip install -e .)")
    probe = container["livenessProbe"]["httpGet"]
    port_of = {p["name"]: p["containerPort"] for p in container["ports"]}
    proc = subprocess.Popen([executable, *command[1:]], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port_of[probe['port']]}{probe['path']}",
                                            timeout=2) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"the operator never answered its liveness probe:\n{proc.stdout.read().decode()}")
                time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port_of['metrics']}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert "rft_operator_reconciles_total" in text
        assert proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
