"""A real Kubernetes API server named by KUBECONFIG, a throw-away namespace, and the operator watching it.

Everything here skips (with the reason) when KUBECONFIG names no reachable cluster. The tests assume nothing
beyond a conformant API server: pods need not be schedulable, images need not be pullable.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_harness import GROUP, PLURAL, ROOT, VERSION, operator_for, wait_for


@pytest.fixture(scope="session")
def api_client() -> Any:
    """An ApiClient for KUBECONFIG's cluster, or a skip saying why there is none."""
    path = os.environ.get("KUBECONFIG", "")
    files = [p for p in path.split(os.pathsep) if p]
    if not files:
        pytest.skip("KUBECONFIG is not set: no cluster to test against")
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
    """The RFTJob CRD from crds/ (created when absent; an installed one is left as it is)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ext = client.ApiextensionsV1Api(api_client)
    body = yaml.safe_load((ROOT / "crds" / "rftjob.yaml").read_text())
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise

    def established() -> bool:
        crd = ext.read_custom_resource_definition(body["metadata"]["name"])
        return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))

    wait_for(established, 60, "the CRD to be established")


@pytest.fixture()
def namespace(api_client: Any, crd_installed: None) -> Iterator[str]:
    """A fresh namespace, deleted afterwards (with everything in it)."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    name = f"rft-test-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "rft-tests"}}})
    try:
        yield name
    finally:
        # the operator has stopped by now: release kopf's finalizers, or the namespace would hang Terminating
        custom = client.CustomObjectsApi(api_client)
        for job in custom.list_namespaced_custom_object(GROUP, VERSION, name, PLURAL).get("items", []):
            custom.patch_namespaced_custom_object(GROUP, VERSION, name, PLURAL, job["metadata"]["name"],
                                                  {"metadata": {"finalizers": None}})
        core.delete_namespace(name)


@pytest.fixture()
def running_operator(namespace: str) -> Iterator[Any]:
    """The operator for the test's namespace, stopped at the end of the test."""
    with operator_for(namespace) as runner:
        yield runner
