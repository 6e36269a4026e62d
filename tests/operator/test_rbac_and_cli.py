"""RBAC registry, the API-call gate, `rft manifest` and `rft-operator --help`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rft_operator import kube
from rft_operator.rbac import required_rules

ROOT = Path(__file__).resolve().parents[2]


def test_required_rules_are_rbac_rules_for_the_table():
    rules = required_rules()
    assert {"apiGroups": ["rft.dev"], "resources": ["rftjobs/status"], "verbs": ["patch"]} in rules
    pods = next(r for r in rules if r["resources"] == ["pods"])
    assert pods["apiGroups"] == [""] and set(pods["verbs"]) == {"list", "watch", "create", "delete"}
    assert all(set(r) == {"apiGroups", "resources", "verbs"} for r in rules)
    # nothing the operator does needs secrets: the API key only travels as a reference
    assert not any("secrets" in r["resources"] for r in rules)


def test_a_call_outside_the_table_is_refused_before_it_reaches_the_server():
    client = kube.Kube(None)
    with pytest.raises(PermissionError, match="API_CALLS"):
        client.call("delete", kube.PVCS, "default", "x")
    with pytest.raises(PermissionError):
        client.call("get", kube.Resource("", "v1", "secrets"), "default", "tinker-key")


def run_rft(*args):
    return subprocess.run([sys.executable, "-m", "rft_runtime.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_rft_manifest_wraps_a_config_for_kubectl(tmp_path):
    out = tmp_path / "job.yaml"
    result = run_rft("manifest", "--config", "examples/tinker.yaml", "--name", "my-job", "--namespace", "team",
                     "--image", "reg/rft:2", "--api-key-secret", "keys:tinker", "-o", str(out))
    assert result.returncode == 0, result.stderr
    body = yaml.safe_load(out.read_text())
    assert body["kind"] == "RFTJob" and body["metadata"] == {"name": "my-job", "namespace": "team"}
    assert body["spec"]["image"] == "reg/rft:2"
    assert body["spec"]["tinker"]["apiKeySecretRef"] == {"name": "keys", "key": "tinker"}
    assert body["spec"]["config"] == yaml.safe_load((ROOT / "examples" / "tinker.yaml").read_text())
    assert "kubectl create secret generic keys" in out.read_text()


def test_rft_manifest_refuses_a_broken_config_or_name(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("buffer:\n  batch_size: 0\n")
    result = run_rft("manifest", "--config", str(bad), "--name", "x")
    assert result.returncode == 2 and "buffer.batch_size" in result.stderr
    result = run_rft("manifest", "--config", "examples/tinker.yaml", "--name", "Not_A_Name")
    assert result.returncode == 2 and "--name" in result.stderr


def test_rft_operator_console_script_documents_its_settings():
    result = subprocess.run([sys.executable, "-c", "import sys; from rft_operator.main import main; "
                             "sys.exit(main(['--help']))"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for flag in ("--namespace", "--liveness", "--metrics-port", "--stall-after-seconds", "--default-image"):
        assert flag in result.stdout


def test_rft_manifest_output_reads_the_same_in_kubernetes_yaml(tmp_path):
    config = yaml.safe_load((ROOT / "examples" / "tinker.yaml").read_text())
    config["buffer"]["explorer_input"]["taskset"]["rollout_args"] = {"n": 4}
    src = tmp_path / "job.yaml"
    src.write_text(yaml.safe_dump(config))
    result = run_rft("manifest", "--config", str(src), "--name", "quoted")
    assert result.returncode == 0, result.stderr
    assert "'n': 4" in result.stdout  # bare n: would be read as the key false by kubectl


def run_operator(env_overrides, tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    env.update(env_overrides)
    return subprocess.run([sys.executable, "-c", "import sys; from rft_operator.main import main; sys.exit(main())",
                           "--metrics-port", "-1", "--liveness", ""], capture_output=True, text=True, timeout=60,
                          env=env, cwd=tmp_path)


def test_rft_operator_without_a_reachable_cluster_exits_with_one_clear_line(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "kubeconfig"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    result = run_operator({"KUBECONFIG": str(config)}, tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "cannot reach" in lines[0], result.stderr
    result = run_operator({"KUBECONFIG": str(tmp_path / "missing"), "HOME": str(tmp_path)}, tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "KUBECONFIG" in lines[0], result.stderr


def test_leader_election_rules_are_the_lease_calls_narrowed_to_one_lease():
    from rft_operator.rbac import leader_election_rules

    rules = leader_election_rules("rft")
    assert {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]} in rules
    assert {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["rft"],
            "verbs": ["get", "patch"]} in rules
    granted = {v for r in rules for v in r["verbs"]}
    assert granted == set(kube.LEADER_CALLS[(kube.LEASES, None)])
    # the job namespaces' rules never include Leases
    assert not any("leases" in r["resources"] for r in required_rules())
