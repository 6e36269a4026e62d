"""Reading rendered manifests and checking objects against a CRD's structural schema, as the API server would."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "rft-operator"
RELEASE = "rft"
NAMESPACE = "rft-system"


class HelmError(Exception):
    """helm exited non-zero; the message is its stderr (what a user sees at install time)."""


def find_helm() -> tuple[str | None, str]:
    """The helm binary (HELM, else .tools/bin/helm, installed on first use), and why not when there is none."""
    explicit = os.environ.get("HELM")
    if explicit:
        return explicit, ""
    local = REPO / ".tools" / "bin" / "helm"
    if not local.exists():
        # CI runs the script before the tests; a developer's first run installs it here (idempotent)
        proc = subprocess.run(["bash", str(REPO / "scripts" / "install-helm.sh")], capture_output=True, text=True,
                              timeout=300)
        if proc.returncode != 0:
            return shutil.which("helm"), f"scripts/install-helm.sh failed: {proc.stderr.strip()[-500:]}"
    return str(local), ""


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    """The rendered objects of one kind."""
    return [o for o in objects if o.get("kind") == kind]


def one(objects: list[dict], kind: str) -> dict:
    """The single rendered object of a kind (fails the test when there is not exactly one)."""
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def to_jsonschema(node: Any) -> Any:
    """An OpenAPI v3 structural schema as JSON Schema: `nullable` and the x-kubernetes-* markers made explicit."""
    if isinstance(node, list):
        return [to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def pruned_fields(obj: Any, schema: dict, path: str = "") -> list[str]:
    """Fields the API server would silently drop (pruning): set in `obj`, declared nowhere in `schema`."""
    if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
        return []
    if path == ".metadata":
        return []  # the object's metadata: the server keeps it whole (a CRD schema may only bound name)
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is None and extra is None:
            # a free-form object (e.g. metadata, which the server checks itself): nothing is pruned
            return []
        dropped = []
        for key, value in obj.items():
            if props is not None and key in props:
                dropped += pruned_fields(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                dropped += pruned_fields(value, extra, f"{path}.{key}")
            elif extra is True or schema.get("x-kubernetes-preserve-unknown-fields"):
                continue
            elif path == "" and key in ("apiVersion", "kind", "metadata"):
                continue
            else:
                dropped.append(f"{path}.{key}")
        return dropped
    if isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [f for i, item in enumerate(obj) for f in pruned_fields(item, schema["items"], f"{path}[{i}]")]
    return []
