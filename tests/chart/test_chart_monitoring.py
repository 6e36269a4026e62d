"""The chart's monitoring pieces: copies of monitoring/, and selectors that find the operator and the job pods."""

from __future__ import annotations

import json

import pytest
import yaml
from chartkit import CHART, NAMESPACE, REPO, by_kind, one

MONITORING = REPO / "monitoring"
CHART_COPIES = CHART / "files" / "monitoring"
ALL_ON = {"monitoring": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True},
                         "prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}}}
# kubectl's client-side apply stores the whole object in an annotation limited to 256 KiB (Argo CD's default)
LAST_APPLIED_LIMIT = 262144


def _sources() -> list:
    files = sorted([*MONITORING.glob("*.json"), *MONITORING.glob("*.yaml"), *MONITORING.glob("*.yml")])
    if not files:
        pytest.skip("monitoring/ has no dashboard or alert rules yet (the metrics issue ships them)")
    return files


def test_chart_copies_are_identical_to_monitoring():
    sources = _sources()
    copies = sorted(p.name for p in CHART_COPIES.iterdir())
    assert copies == [p.name for p in sources], "run `python tests/chart/sync_chart.py`"
    for source in sources:
        assert (CHART_COPIES / source.name).read_bytes() == source.read_bytes(), (
            f"{source.name} differs from monitoring/: run `python tests/chart/sync_chart.py`")


def test_monitoring_is_off_by_default(render):
    kinds = {o["kind"] for o in render()}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert not by_kind(render(), "ConfigMap")


def test_prometheus_rule_holds_the_alert_rules(render):
    sources = [p for p in _sources() if p.suffix in (".yaml", ".yml")]
    expected = [group for p in sources for group in yaml.safe_load(p.read_text())["groups"]]
    rule = one(render(ALL_ON), "PrometheusRule")
    # compared after helm's YAML round trip: the {{ $labels.x }} templates must reach Prometheus untouched
    assert rule["spec"]["groups"] == expected
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert {"RFTJobFailed", "RFTJobProgressStalled"} <= alerts
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            assert r["expr"].strip() and ("alert" in r or "record" in r)


def test_grafana_dashboard_configmap(render):
    dashboards = [p for p in _sources() if p.suffix == ".json"]
    cm = one(render(ALL_ON), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert sorted(cm["data"]) == sorted(p.name for p in dashboards)
    for path in dashboards:
        assert json.loads(cm["data"][path.name]) == json.loads(path.read_text())
    assert len(json.dumps(cm)) < LAST_APPLIED_LIMIT
    other_ns = one(render({**ALL_ON, "monitoring": {**ALL_ON["monitoring"], "grafanaDashboard": {
        "enabled": True, "namespace": "grafana", "labels": {"grafana_dashboard": "1"}}}}), "ConfigMap")
    assert other_ns["metadata"]["namespace"] == "grafana"


def test_service_monitor_selects_the_metrics_service(render):
    objects = render(ALL_ON)
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["honorLabels"] is True


def test_pod_monitor_selects_the_pods_the_operator_builds(render):
    """Build a job pod with the operator's own builders from an example RFTJob; the PodMonitor must find it."""
    from rft_operator.builders import build_pods
    from rft_operator.jobconfig import prepare_config
    from rft_operator.spec import parse_spec

    job = yaml.safe_load((REPO / "examples" / "rftjobs" / "tinker.yaml").read_text())
    job["metadata"].update(namespace="ml", uid="0000-test")
    spec = parse_spec(job["spec"])
    config = prepare_config(job["spec"]["config"], spec, job_name=job["metadata"]["name"], namespace="ml")
    (pod,) = build_pods(job, spec, config, attempt=0)

    for values, selector in ((ALL_ON, {"any": True}),
                             ({**ALL_ON, "rbac": {"scope": "namespaced"}, "watchNamespaces": ["ml"]},
                              {"matchNames": ["ml"]})):
        monitor = one(render(values), "PodMonitor")
        assert monitor["spec"]["namespaceSelector"] == selector
        assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        assert endpoint["port"] in ports
        # the `rftjob` label the alert rules use comes from the pod's job label
        (relabel,) = endpoint["relabelings"]
        label = relabel["sourceLabels"][0].removeprefix("__meta_kubernetes_pod_label_")
        assert {k.replace(".", "_").replace("/", "_") for k in pod["metadata"]["labels"]} >= {label}
        assert pod["metadata"]["labels"]["rft.dev/job"] == job["metadata"]["name"]
        assert relabel["targetLabel"] == "rftjob"
