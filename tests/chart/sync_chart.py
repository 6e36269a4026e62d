"""Refresh the chart's copies from their sources: `python tests/chart/sync_chart.py`.

Helm cannot read files outside the chart, so the chart carries copies: the CRD (crds/), the dashboards and alert
rules (monitoring/), and the RBAC rules (rft_operator.rbac's namespaced, cluster-scoped and leader-election rules). The chart tests fail when a copy
is stale and name this script.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
FILES = REPO / "charts" / "rft-operator" / "files"
RULES_HEADER = """\
# Generated from rft_operator.rbac.namespaced_rules() (the operator's table of every API call it makes, on
# namespaced resources) by tests/chart/sync_chart.py; the chart tests fail when this file and the code disagree.
"""


def rules_text() -> str:
    """files/rbac-rules.yaml as it must read for the operator's current code (namespaced resources)."""
    from rft_operator.rbac import namespaced_rules

    return RULES_HEADER + yaml.safe_dump(namespaced_rules(), default_flow_style=None, sort_keys=False)


CLUSTER_RULES_HEADER = """\
# Generated from rft_operator.rbac.cluster_scoped_rules() (the cluster-scoped part of the operator's table of
# API calls: the ClusterRFTRuntimes) by tests/chart/sync_chart.py; the chart tests fail when it drifts.
"""


def cluster_rules_text() -> str:
    """files/rbac-cluster-rules.yaml as it must read for the operator's current code."""
    from rft_operator.rbac import cluster_scoped_rules

    return CLUSTER_RULES_HEADER + yaml.safe_dump(cluster_scoped_rules(), default_flow_style=None, sort_keys=False)


LEADER_HEADER = """\
# Generated from rft_operator.rbac.leader_election_rules() by tests/chart/sync_chart.py: the Lease rules of the
# leader-election Role; templates/rbac.yaml names the release's own Lease in resourceNames.
"""


def leader_rules_text() -> str:
    """files/rbac-leader-rules.yaml as it must read for the operator's current code."""
    from rft_operator.rbac import leader_election_rules

    return LEADER_HEADER + yaml.safe_dump(leader_election_rules("RFT_LEASE_NAME"), default_flow_style=None,
                                          sort_keys=False)


def main() -> None:
    """Copy crds/*.yaml and monitoring/* into the chart and regenerate the RBAC rules."""
    (FILES / "crds").mkdir(parents=True, exist_ok=True)
    for old in (FILES / "crds").glob("*.yaml"):
        old.unlink()
    for crd in sorted((REPO / "crds").glob("*.yaml")):
        shutil.copy2(crd, FILES / "crds" / crd.name)
    monitoring = FILES / "monitoring"
    if monitoring.exists():
        shutil.rmtree(monitoring)
    monitoring.mkdir()
    for source in sorted((REPO / "monitoring").glob("*")):
        if source.suffix in (".json", ".yaml", ".yml"):
            shutil.copy2(source, monitoring / source.name)
    (FILES / "rbac-rules.yaml").write_text(rules_text())
    (FILES / "rbac-cluster-rules.yaml").write_text(cluster_rules_text())
    (FILES / "rbac-leader-rules.yaml").write_text(leader_rules_text())
    print(f"refreshed {FILES.relative_to(REPO)}")


if __name__ == "__main__":
    main()
