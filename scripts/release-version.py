#!/usr/bin/env python3
"""Check that a release tag and every place that carries the version agree; print `version=<version>`.

    python scripts/release-version.py v0.1.0     # what .github/workflows/release.yaml runs on a tag

One version for everything a release ships: pyproject.toml's version, the chart's version and appVersion (the
chart's default image tag), the VERSION build argument of both Dockerfiles (the images' version label) and the
operator's default image names. Exits 1 naming each place that differs.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def versions() -> dict[str, str]:
    """Where the version is written, and what each place says."""
    chart = yaml.safe_load((ROOT / "charts" / "rft-operator" / "Chart.yaml").read_text())
    spec = (ROOT / "operator" / "rft_operator" / "spec.py").read_text()
    found = {
        "pyproject.toml version": tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"],
        "Chart.yaml version": str(chart["version"]),
        "Chart.yaml appVersion": str(chart["appVersion"]),
        "rft_runtime.__version__": re.search(r'__version__ = "([^"]+)"',
                                             (ROOT / "runtime" / "rft_runtime" / "__init__.py").read_text()).group(1),
        "rft_operator.spec.DEFAULT_IMAGE tag": re.search(r'DEFAULT_IMAGE = "[^"]+:([^"]+)"', spec).group(1),
    }
    for name in ("Dockerfile", "Dockerfile.verl"):
        found[f"{name} ARG VERSION"] = re.search(r"(?m)^ARG VERSION=(\S+)$", (ROOT / name).read_text()).group(1)
    return found


def main(argv: list[str]) -> int:
    """Compare the tag (v<version>) with every place; print version=<version> for $GITHUB_OUTPUT."""
    if len(argv) != 1 or not re.fullmatch(r"v\d+\.\d+\.\d+([-.][0-9A-Za-z.]+)?", argv[0]):
        print("usage: release-version.py v<major>.<minor>.<patch>", file=sys.stderr)
        return 2
    version = argv[0][1:]
    wrong = {where: got for where, got in versions().items() if got != version}
    for where, got in wrong.items():
        print(f"{where} is {got}, the tag says {version}: set it to {version} before tagging", file=sys.stderr)
    if wrong:
        return 1
    print(f"version={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
