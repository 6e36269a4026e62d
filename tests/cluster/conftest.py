"""A real Kubernetes API server named by KUBECONFIG, a throw-away namespace, and the operator watching it.

Everything here skips (with the reason) when KUBECONFIG names no reachable cluster; `.ci/run` starts one
(../shared/k8s's control plane) when its binaries are built on the machine. The tests assume nothing beyond a
conformant API server: pods need not be schedulable, images need not be pullable.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_harness import GROUP, ROOT, RUNTIMES, VERSION, Kube, install_crd, operator_for

WHERE = ("they run in CI, where .ci/run starts the ../shared/k8s control plane when its binaries are built "
         "(../shared/k8s/build.sh), or against any cluster KUBECONFIG names")


@pytest.fixture(scope="session")
def api_client() -> Any:
    """An ApiClient for KUBECONFIG's cluster, or a skip saying why there is none."""
    path = os.environ.get("KUBECONFIG", "")
    files = [p for p in path.split(os.pathsep) if p]
    if not files:
        why = os.environ.get("RFT_NO_CLUSTER_REASON")
        pytest.skip(f"KUBECONFIG is not set: no cluster to test against{f' ({why})' if why else ''}; {WHERE}")
    if not all(Path(p).is_file() for p in files):
        pytest.skip(f"KUBECONFIG names no readable file: {path}")
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_kube_config(config_file=files[0], client_configuration=configuration)
        api = client.ApiClient(configuration)
        client.VersionApi(api).get_code(_request_timeout=5)
    except Exception as exc:  # any reason the cluster cannot be reached is a reason to skip
        pytest.skip(f"the cluster in {files[0]} is not reachable: {exc}")
    return api


@pytest.fixture(scope="session")
def crd_installed(api_client: Any) -> None:
    """The CRDs of crds/ (RFTJob, ClusterRFTRuntime), and no default runtime the tests did not make (it would
    shape every test's pods)."""
    from kubernetes import client

    for path in sorted((ROOT / "crds").glob("*.yaml")):
        install_crd(api_client, yaml.safe_load(path.read_text()))
    from rft_operator.runtimes import DEFAULT_ANNOTATION

    runtimes = client.CustomObjectsApi(api_client).list_cluster_custom_object(GROUP, VERSION, RUNTIMES)["items"]
    defaults = [r["metadata"]["name"] for r in runtimes
                if (r["metadata"].get("annotations") or {}).get(DEFAULT_ANNOTATION) == "true"]
    if defaults:
        pytest.skip(f"this cluster has a default ClusterRFTRuntime ({', '.join(defaults)}): it would shape every "
                    "test's pods; the tests need a cluster without one")


@pytest.fixture()
def namespace(api_client: Any, crd_installed: None) -> Iterator[str]:
    """A fresh namespace, deleted afterwards with everything in it (nothing of the operator holds it up)."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    name = f"rft-test-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "rft-tests"}}})
    try:
        yield name
    finally:
        core.delete_namespace(name)


@pytest.fixture()
def kube(api_client: Any, namespace: str) -> Kube:
    """The test's namespace, as kubectl would use it."""
    return Kube(api_client, namespace)


@pytest.fixture()
def apis(api_client: Any) -> tuple[Any, Any]:
    """(CustomObjectsApi, CoreV1Api) of the cluster."""
    from kubernetes import client

    return client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)


@pytest.fixture()
def running_operator(namespace: str) -> Iterator[Any]:
    """The operator for the test's namespace, stopped at the end of the test."""
    with operator_for(namespace) as runner:
        yield runner
