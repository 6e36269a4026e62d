"""RFTJob bodies for the tests, wrapping the repository's seed configs."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def seed(name: str) -> dict[str, Any]:
    """One of the seed configs in examples/ as a dict."""
    return yaml.safe_load((ROOT / "examples" / name).read_text())


def rftjob(name: str, config: dict[str, Any] | None = None, namespace: str = "default",
           **spec: Any) -> dict[str, Any]:
    """An RFTJob with uid, namespace and resourceVersion set (an emulated server fills in none of them)."""
    body = {
        "apiVersion": "rft.dev/v1alpha1",
        "kind": "RFTJob",
        "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()), "generation": 1,
                     # kopf guards its finalizer patch with a resourceVersion test; kmock keeps none itself
                     "resourceVersion": "1"},
        "spec": {"config": copy.deepcopy(config if config is not None else seed("tinker.yaml")), **spec},
    }
    return body


def example(file: str, namespace: str = "default") -> dict[str, Any]:
    """One of examples/rftjobs/*.yaml as `kubectl apply` would send it (plus what kmock does not fill in)."""
    body = yaml.safe_load((ROOT / "examples" / "rftjobs" / file).read_text())
    body["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), generation=1, resourceVersion="1")
    return body
