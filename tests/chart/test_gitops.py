"""GitOps: the Argo CD health check for RFTJob run by a real Lua VM, and the docs' copies of it."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartkit import REPO

CHECK_DIR = REPO / "gitops" / "argocd" / "resource_customizations" / "rft.dev" / "RFTJob"
HEALTH_LUA = CHECK_DIR / "health.lua"
CASES = yaml.safe_load((CHECK_DIR / "health_test.yaml").read_text())["tests"]
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def _lua_runtime(flavour: str):
    # Argo CD runs health checks in gopher-lua (Lua 5.1 semantics); 5.4 guards against relying on either's quirks
    module = importlib.import_module(f"lupa.{flavour}")
    return module.LuaRuntime(unpack_returned_tuples=True)


def _to_lua(lua, value: Any):
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def _assess(flavour: str, obj: dict, script: str | None = None) -> dict[str, str]:
    lua = _lua_runtime(flavour)
    # Argo CD hands the object over as the global `obj` and reads the table the chunk returns
    lua.globals().obj = _to_lua(lua, obj)
    result = lua.execute(script if script is not None else HEALTH_LUA.read_text())
    return {"status": result["status"], "message": result["message"]}


@pytest.mark.parametrize("flavour", ["lua51", "lua54"])
@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_health_check(flavour, case):
    obj = yaml.safe_load((CHECK_DIR / case["inputPath"]).read_text())
    assert _assess(flavour, obj) == case["healthStatus"]


def test_the_cases_cover_every_phase_and_argo_status():
    phases = set()
    for case in CASES:
        obj = yaml.safe_load((CHECK_DIR / case["inputPath"]).read_text())
        phases.add((obj.get("status") or {}).get("phase"))
        assert case["healthStatus"]["status"] in ARGO_STATUSES
    from rft_operator.status import PHASES

    assert set(PHASES) <= phases
    assert {c["healthStatus"]["status"] for c in CASES} >= {"Healthy", "Progressing", "Degraded", "Suspended"}


def test_health_check_on_the_operators_own_status():
    """Statuses written by the operator's status code (not hand-made) map as the issue says."""
    from rft_operator import status as st

    expected = {st.PENDING: "Progressing", st.RUNNING: "Progressing", st.SUCCEEDED: "Healthy",
                st.FAILED: "Degraded", st.SUSPENDED: "Suspended"}
    for phase, health in expected.items():
        conditions = st.build_conditions(phase, "Why", "what happened", stalled=None, old=None, now=0.0,
                                         generation=3)
        obj = {"apiVersion": "rft.dev/v1alpha1", "kind": "RFTJob",
               "metadata": {"name": "j", "namespace": "ml", "generation": 3},
               "spec": {"suspend": phase == st.SUSPENDED},
               "status": {"phase": phase, "reason": "Why", "message": "what happened", "observedGeneration": 3,
                          "conditions": conditions}}
        assert _assess("lua51", obj)["status"] == health, phase
        # a spec change the operator has not seen yet is never reported as settled
        obj["metadata"]["generation"] = 4
        assert _assess("lua51", obj)["status"] == "Progressing", phase


def test_argocd_cm_snippet_carries_the_same_script():
    """The argocd-cm patch users apply holds health.lua verbatim."""
    patch = yaml.safe_load((REPO / "gitops" / "argocd" / "argocd-cm-rftjob-health.yaml").read_text())
    assert patch["kind"] == "ConfigMap" and patch["metadata"]["name"] == "argocd-cm"
    script = patch["data"]["resource.customizations.health.rft.dev_RFTJob"]
    assert script == HEALTH_LUA.read_text()


def test_flux_examples_parse_and_point_at_the_chart():
    flux = REPO / "gitops" / "flux"
    docs = [d for p in sorted(flux.rglob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    kinds = {d["kind"] for d in docs}
    assert {"HelmRelease", "Kustomization"} <= kinds
    release = next(d for d in docs if d["kind"] == "HelmRelease")
    assert release["spec"]["chart"]["spec"]["chart"] == "./charts/rft-operator"
    # Helm keeps the CRD in templates/, so the release upgrades it; Flux must not also manage crds/
    assert release["spec"].get("install", {}).get("crds", "Skip") == "Skip"
    jobs = next(d for d in docs if d["kind"] == "Kustomization" and d["spec"].get("healthCheckExprs"))
    (expr,) = jobs["spec"]["healthCheckExprs"]
    assert (expr["apiVersion"], expr["kind"]) == ("rft.dev/v1alpha1", "RFTJob")
    assert "Succeeded" in expr["current"] and "Failed" in expr["failed"]


def test_health_check_follows_a_job_through_the_operators_lifecycle():
    """Statuses computed by the operator's reconcile (compute_status) from real pod phases, read by the check."""
    from rft_operator.builders import build_pods
    from rft_operator.jobconfig import prepare_config
    from rft_operator.reconcile import Observed, compute_status
    from rft_operator.spec import parse_spec

    def job(**spec_changes: Any) -> dict:
        body = yaml.safe_load((REPO / "examples" / "rftjobs" / "tinker.yaml").read_text())
        body["metadata"].update(namespace="ml", uid="u-1", generation=1)
        body["spec"].update(spec_changes)
        return body

    def health(body: dict, pod_phase: str | None, old: dict | None = None) -> tuple[str, dict]:
        spec = parse_spec(body["spec"])
        config = prepare_config(body["spec"]["config"], spec, job_name=body["metadata"]["name"], namespace="ml")
        body["status"] = old or {}
        pods = []
        if pod_phase:
            (pod,) = build_pods(body, spec, config, attempt=int((old or {}).get("retries") or 0))
            pod["status"] = {"phase": pod_phase, "podIP": "10.0.0.9"}
            if pod_phase == "Failed":
                pod["status"]["containerStatuses"] = [
                    {"name": "rft", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]
            pods = [pod]
        status = compute_status(body, spec, config, Observed(pods=pods), now=1_000_000.0)
        body["status"] = status
        return _assess("lua51", body)["status"], status

    assert health(job(), None)[0] == "Progressing"
    running, status = health(job(), "Running", None)
    assert running == "Progressing" and status["phase"] == "Running"
    assert health(job(), "Succeeded", status)[0] == "Healthy"
    failed, status = health(job(backoffLimit=0), "Failed", status)
    assert (failed, status["phase"]) == ("Degraded", "Failed")
    suspended, status = health(job(suspend=True), None, None)
    assert (suspended, status["phase"]) == ("Suspended", "Suspended")
