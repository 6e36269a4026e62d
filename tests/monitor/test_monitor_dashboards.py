"""The dashboard, the alert rules and docs/metrics.md name only metrics that exist, and name all of them."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rft_runtime.monitor import Monitor

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "monitoring" / "rft-jobs-dashboard.json"
ALERTS = ROOT / "monitoring" / "rft-alerts.yaml"
DOCS = ROOT / "docs" / "metrics.md"
NAME = re.compile(r"\brft_[a-z_]+\b")
LABELS = {"rft_job"}  # the runtime's job label is spelled like a metric; it is not one


@pytest.fixture(scope="module")
def exposed(tmp_path_factory) -> dict[str, set[str]]:
    """Family and sample names the runtime and the operator really serve, read from a live endpoint."""
    record = {
        "step": 1, "total_steps": 2, "explore_step": 1, "critic/rewards/mean": 0.5, "critic/rewards/std": 0.1, "critic/rewards/min": 0.0,
        "critic/rewards/max": 1.0, "rollout/accuracy/mean": 0.5, "rollout/format_score/mean": 0.1, "actor/pg_loss": 0.3, "actor/kl_loss": 0.01, "actor/entropy": 1.2,
        "response_length/mean": 10.0, "prompt_tokens": 10, "response_tokens": 20, "rollouts": 4,
        "failed_rollouts": 1, "truncated_prompts": 0, "time/sampling": 0.1, "time/update_actor": 0.2,
        "time/sync": 0.01, "time/step": 0.3, "weight_version_lag": 0, "learning_rate": 1e-5,
    }
    from types import SimpleNamespace as NS

    cfg = NS(name="d", backend="tinker", algorithm=NS(algorithm_type="grpo"), model=NS(tinker_base_model="m"),
             monitor=NS(monitor_type="none", monitor_args=None))
    with Monitor(cfg, tmp_path_factory.mktemp("job"), metrics_port=0, progress=False) as mon:
        mon.log_step(record)
        text = urllib.request.urlopen(mon.url, timeout=5).read().decode()
    runtime = list(text_string_to_metric_families(text))
    out = {
        "runtime_families": {f.name for f in runtime},
        "runtime_samples": {s.name for f in runtime for s in f.samples},
        "operator_samples": set(),
    }
    try:
        from rft_operator.metrics import OperatorMetrics
    except ImportError:  # the operator is another area; without it only runtime names are checked
        return out
    op = list(text_string_to_metric_families(generate_latest(OperatorMetrics().registry).decode()))
    # per-job series exist only once a job is seen: take the family names too
    out["operator_samples"] = {s.name for f in op for s in f.samples} | {f.name for f in op}
    return out


def _exprs_of_dashboard() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def _check_names(exprs: list[str], exposed: dict[str, set[str]]) -> None:
    known = exposed["runtime_samples"] | exposed["operator_samples"]
    for expr in exprs:
        for name in set(NAME.findall(expr)) - LABELS:
            if name.startswith("rft_operator_") and not exposed["operator_samples"]:
                continue
            assert name in known, f"{name} in {expr!r} is not served"


def test_dashboard_selects_jobs_and_names_only_served_metrics(exposed):
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert {"datasource", "namespace", "job"} <= set(variables)
    assert "rft_job" in variables["job"]["definition"]
    exprs = _exprs_of_dashboard()
    _check_names(exprs, exposed)
    for expr in exprs:
        if NAME.search(expr) and "rft_operator_" not in expr:
            assert 'rft_job=~"$job"' in expr and 'namespace=~"$namespace"' in expr, expr
    shown = " ".join(exprs)
    for metric in ("rft_reward_mean", "rft_policy_loss", "rft_train_steps_total", "rft_weight_version_lag",
                   "rft_last_progress_timestamp_seconds"):
        assert metric in shown, f"the dashboard does not show {metric}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_alert_rules_cover_failure_stall_and_down_with_served_metrics(exposed):
    rules = _rules()
    names = {r["alert"] for r in rules}
    assert {"RFTJobFailed", "RFTJobProgressStalled", "RFTJobRuntimeDown"} <= names
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["for"]
    _check_names([r["expr"] for r in rules], exposed)


def test_every_expression_is_valid_promql():
    parser = pytest.importorskip("promql_parser", reason="promql-parser is not installed (pip install promql-parser)")
    grafana = {"$__rate_interval": "5m", "$namespace": ".*", "$job": ".*"}
    for expr in _exprs_of_dashboard() + [r["expr"] for r in _rules()]:
        for var, value in grafana.items():
            expr = expr.replace(var, value)
        parser.parse(expr)


def test_docs_list_every_runtime_metric(exposed):
    documented = set(re.findall(r"^\| `(rft_[a-z_]+)`", DOCS.read_text(), flags=re.M))
    families = set()
    for name in exposed["runtime_families"]:
        if name.endswith("_created"):  # the client library's series-start samples, not ours to document
            continue
        # the text parser names a counter's family without `_total`; the docs use the sample name users query
        families.add(name + "_total" if name + "_total" in exposed["runtime_samples"] else name)
    assert families == documented
