"""YAML for files that kubectl and the API server read (Go, YAML 1.1): quoted where PyYAML would not quote."""

from __future__ import annotations

from typing import Any

import yaml

# YAML 1.1 reads these bare words as booleans; PyYAML already quotes yes/no/on/off/true/false but not y/n.
_BOOLISH = frozenset({"y", "Y", "n", "N"})


class _Dumper(yaml.SafeDumper):
    """No anchors (shared sub-trees are written out in full) and y/n quoted."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="'" if value in _BOOLISH else None)


_Dumper.add_representer(str, _represent_str)


def dump(obj: Any) -> str:
    """YAML text that reads back the same in Kubernetes' parser (keys in insertion order)."""
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)
