"""Object names of a release: the README's `helm install rft ...` must not give `rft-rft-operator`."""

from __future__ import annotations

import yaml
from chartkit import CHART, RELEASE


def _names(helm, release: str, *extra: str) -> set[str]:
    out = helm("template", release, str(CHART), "--namespace", "rft-system", *extra)
    return {d["metadata"]["name"] for d in yaml.safe_load_all(out) if d and d["kind"] != "CustomResourceDefinition"}


def test_the_readme_release_name_does_not_repeat_in_object_names(helm, render):
    assert RELEASE == "rft"  # the release name the README and docs/install.md use
    deployment = next(d for d in render() if d["kind"] == "Deployment")
    assert deployment["metadata"]["name"] == "rft-operator"
    # (the user ClusterRoles rft-rftjob-edit/view have fixed names: the built-in roles aggregate them)
    assert not [n for n in _names(helm, RELEASE) if "rft-rft-operator" in n]


def test_other_release_names_still_prefix_the_chart_name(helm):
    assert "team-rft-operator" in _names(helm, "team")
    assert "rft-operator-prod" in _names(helm, "rft-operator-prod")  # it already holds the chart name
    assert "op" in _names(helm, "rft", "--set", "fullnameOverride=op")
