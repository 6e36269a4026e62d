"""A real helm binary (scripts/install-helm.sh) and a renderer for the rft-operator chart."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartkit import CHART, NAMESPACE, RELEASE, HelmError, find_helm


@pytest.fixture(scope="session")
def helm() -> Callable[..., str]:
    """Run helm with arguments; returns stdout, raises HelmError with stderr on failure."""
    path, why = find_helm()
    if not path:
        pytest.skip(f"no helm binary: {why or 'scripts/install-helm.sh could not install one'}")

    def run(*args: str) -> str:
        proc = subprocess.run([path, *args], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise HelmError(proc.stderr.strip() or proc.stdout.strip())
        return proc.stdout

    return run


def _set_args(values: dict[str, Any] | None, tmp_dir: Path) -> list[str]:
    if not values:
        return []
    path = tmp_dir / f"values-{abs(hash(repr(values)))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["-f", str(path)]


@pytest.fixture(scope="session")
def render(helm: Callable[..., str], tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[dict]]:
    """`helm template` of the chart with these values -> the rendered objects (empty documents dropped)."""
    tmp_dir = tmp_path_factory.mktemp("values")
    cache: dict[str, list[dict]] = {}

    def run(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> list[dict]:
        key = repr((values, namespace))
        if key not in cache:
            out = helm("template", RELEASE, str(CHART), "--namespace", namespace, *_set_args(values, tmp_dir))
            cache[key] = [doc for doc in yaml.safe_load_all(out) if doc]
        # each caller gets its own copy: tests may edit what they got
        return copy.deepcopy(cache[key])

    return run


@pytest.fixture(scope="session")
def values_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[[dict[str, Any]], list[str]]:
    """`-f <file>` arguments for a values dict (for direct helm calls)."""
    tmp_dir = tmp_path_factory.mktemp("values-direct")
    return lambda values: _set_args(values, tmp_dir)

