"""The release path: one version across everything a tag ships, and a workflow that builds and pushes it all.

The workflow itself runs on GitHub (Docker, a registry); here its shape and the version check it runs are.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib

import yaml
from chartkit import CHART, REPO

WORKFLOW = REPO / ".github" / "workflows" / "release.yaml"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _workflow() -> dict:
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads a bare `on` as true
    return data


def _check(tag: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "release-version.py"), tag], capture_output=True,
                          text=True, timeout=60)


def test_the_tag_of_the_current_version_passes_the_check():
    proc = _check(f"v{VERSION}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"version={VERSION}"


def test_a_tag_that_disagrees_fails_naming_every_place_to_change():
    proc = _check("v9.9.9")
    assert proc.returncode == 1
    for where in ("pyproject.toml version", "Chart.yaml version", "Chart.yaml appVersion", "Dockerfile ARG VERSION",
                  "Dockerfile.verl ARG VERSION", "rft_operator.spec.DEFAULT_IMAGE tag", "rft_runtime.__version__"):
        assert where in proc.stderr, where
    assert _check("0.1").returncode == 2


def test_the_workflow_runs_on_version_tags_and_checks_the_version_first():
    flow = _workflow()
    assert flow["on"] == {"push": {"tags": ["v*.*.*"]}}
    assert flow["permissions"] == {"contents": "read", "packages": "write"}
    jobs = flow["jobs"]
    steps = " ".join(str(s.get("run", "")) for s in jobs["version"]["steps"])
    assert 'scripts/release-version.py "$GITHUB_REF_NAME"' in steps
    assert jobs["images"]["needs"] == "version"
    assert set(jobs["chart"]["needs"]) == {"version", "images"}


def test_the_workflow_pushes_all_three_images_with_the_one_version():
    images = _workflow()["jobs"]["images"]
    variants = {(m["file"], m["suffix"], m["build-args"]) for m in images["strategy"]["matrix"]["include"]}
    assert variants == {("Dockerfile", "", ""), ("Dockerfile", "-engine", "WITH_ENGINE=true"),
                        ("Dockerfile.verl", "-verl", "")}
    for file, _, _ in variants:
        assert (REPO / file).is_file()
    build = next(s for s in images["steps"] if str(s.get("uses", "")).startswith("docker/build-push-action"))
    assert build["with"]["push"] is True and build["with"]["file"] == "${{ matrix.file }}"
    assert build["with"]["tags"].endswith("/rft-runtime:${{ needs.version.outputs.version }}${{ matrix.suffix }}")
    assert "VERSION=${{ needs.version.outputs.version }}" in build["with"]["build-args"]
    # the engine image's CPU torch: its index comes from a repository variable, and a release without it stops
    assert "TORCH_INDEX_URL=${{ vars.TORCH_INDEX_URL }}" in build["with"]["build-args"]
    guard = next(s for s in images["steps"] if "TORCH_INDEX_URL" in str(s.get("if", "")))
    assert "matrix.suffix == '-engine'" in guard["if"] and "exit 1" in guard["run"]
    # every action is pinned to a release, never a branch
    for job in _workflow()["jobs"].values():
        for step in job["steps"]:
            if "uses" in step:
                assert "@v" in step["uses"] and not step["uses"].endswith(("@main", "@master")), step["uses"]


def test_the_chart_goes_out_as_an_oci_artifact_of_the_same_version():
    run = next(s["run"] for s in _workflow()["jobs"]["chart"]["steps"] if "run" in s)
    assert "helm lint --strict charts/rft-operator" in run
    assert 'helm package charts/rft-operator --version "$VERSION" --app-version "$VERSION"' in run
    assert 'helm push "dist/rft-operator-$VERSION.tgz" "oci://ghcr.io/$OWNER/charts"' in run
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["name"] == "rft-operator" and chart["version"] == chart["appVersion"] == VERSION
