"""Reads Trinity-RFT's config schema and registered names from its source, without importing Trinity.

Trinity's config is a tree of dataclasses (`trinity/common/config.py`); its algorithm, workflow and reward
names live in `Registry(..., default_mapping={...})` calls. Both are read with `ast`, so no Trinity
dependency (torch, ray, vllm) is needed. The result is committed as `trinity_facts.py`, from which the config
models take the fields this runtime does not spell out by hand:

    python -m rft_runtime.config.trinity_schema trinity_rft-0.6.0-py3-none-any.whl \\
        > runtime/rft_runtime/config/trinity_facts.py

The schema-coverage test reads the wheel the same way and checks every field path against the models.
"""

from __future__ import annotations

import ast
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_FILE = "trinity/common/config.py"
CONSTANTS_FILE = "trinity/common/constants.py"
# registry name in the output -> the module holding its Registry(default_mapping=...)
REGISTRY_FILES = {
    "algorithms": "trinity/algorithm/__init__.py",
    "workflows": "trinity/common/workflows/__init__.py",
    "reward_fns": "trinity/common/rewards/__init__.py",
    "policy_loss_fns": "trinity/algorithm/policy_loss_fn/__init__.py",
    "advantage_fns": "trinity/algorithm/advantage_fn/__init__.py",
    "kl_fns": "trinity/algorithm/kl_fn/__init__.py",
    "entropy_loss_fns": "trinity/algorithm/entropy_loss_fn/__init__.py",
    "sample_strategies": "trinity/algorithm/sample_strategy/__init__.py",
    "selectors": "trinity/buffer/selector/__init__.py",
}
SECTION = "<section>"  # the default of a field whose default is a nested dataclass instance


@dataclass(frozen=True)
class TrinityField:
    """One dataclass field: its name, annotation as written, and default (SECTION for a nested dataclass)."""

    name: str
    annotation: str
    default: Any


class Source:
    """Trinity's files, from a wheel or an unpacked source tree (the folder holding `trinity/`)."""

    def __init__(self, where: str | Path):
        self.where = Path(where)

    def read(self, rel: str) -> str:
        """The text of one file of the package."""
        if self.where.is_file():
            with zipfile.ZipFile(self.where) as zf:
                return zf.read(rel).decode("utf-8")
        return (self.where / rel).read_text(encoding="utf-8")


def _constants(tree: ast.Module) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """Module-level string constants, and each Enum class as {MEMBER: value}."""
    consts: dict[str, Any] = {}
    enums: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                consts[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
        elif isinstance(node, ast.ClassDef):
            members = {}
            for item in node.body:
                if (isinstance(item, ast.Assign) and isinstance(item.targets[0], ast.Name)
                        and isinstance(item.value, ast.Constant) and isinstance(item.value.value, str)
                        and item.targets[0].id.isupper()):
                    members[item.targets[0].id] = item.value.value
            if members:
                enums[node.name] = members
    return consts, enums


def _default(value: ast.expr | None, consts: dict[str, Any], enums: dict[str, dict[str, str]],
             classes: set[str]) -> Any:
    if value is None:
        return None
    if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "field":
        for kw in value.keywords:
            if kw.arg == "default":
                return _default(kw.value, consts, enums, classes)
            if kw.arg == "default_factory":
                factory = kw.value
                if isinstance(factory, ast.Name):
                    if factory.id in classes:
                        return SECTION
                    return {"dict": {}, "list": []}[factory.id]
                if isinstance(factory, ast.Lambda):
                    return ast.literal_eval(factory.body)
        raise ValueError(f"unreadable field(): {ast.dump(value)}")
    if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Attribute):
        # StorageType.FILE.value
        return enums[value.value.value.id][value.value.attr]
    if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name) and value.value.id in enums:
        return enums[value.value.id][value.attr]
    if isinstance(value, ast.Name):
        return consts[value.id]
    return ast.literal_eval(value)


def read_schema(src: Source) -> tuple[dict[str, list[TrinityField]], dict[str, tuple[str, ...]]]:
    """({dataclass name: fields in order}, {enum name: values}) of Trinity's config module."""
    consts, enums = _constants(ast.parse(src.read(CONSTANTS_FILE)))
    tree = ast.parse(src.read(CONFIG_FILE))
    dataclasses = [n for n in tree.body if isinstance(n, ast.ClassDef)
                   and any(getattr(d, "id", None) == "dataclass" for d in n.decorator_list)]
    names = {n.name for n in dataclasses}
    out: dict[str, list[TrinityField]] = {}
    for cls in dataclasses:
        fields = []
        for item in cls.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                annotation = ast.unparse(item.annotation)
                default = _default(item.value, consts, enums, names) if item.value is not None else None
                fields.append(TrinityField(item.target.id, annotation, default))
        out[cls.name] = fields
    return out, {name: tuple(members.values()) for name, members in enums.items()}


def read_registries(src: Source) -> dict[str, tuple[str, ...]]:
    """The names each of Trinity's registries knows without plugins, in its order."""
    out = {}
    for key, rel in REGISTRY_FILES.items():
        names: list[str] = []
        for node in ast.walk(ast.parse(src.read(rel))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Registry":
                for kw in node.keywords:
                    if kw.arg == "default_mapping" and isinstance(kw.value, ast.Dict):
                        names += [k.value for k in kw.value.keys if isinstance(k, ast.Constant)]
        out[key] = tuple(names)
    return out


def _inner_classes(annotation: str, classes: dict[str, Any]) -> tuple[str | None, str]:
    """(dataclass named inside the annotation, how its path continues: '', '[]' or '.*')."""
    node = ast.parse(annotation, mode="eval").body
    suffix = ""
    while isinstance(node, ast.Subscript):
        head = ast.unparse(node.value)
        if head in ("List", "list"):
            suffix += "[]"
            node = node.slice
        elif head in ("Dict", "dict"):
            suffix += ".*"
            node = node.slice.elts[1] if isinstance(node.slice, ast.Tuple) else node.slice
        elif head == "Optional":
            node = node.slice
        else:
            break
    name = ast.unparse(node)
    return (name, suffix) if name in classes else (None, suffix)


def field_paths(classes: dict[str, list[TrinityField]], root: str = "Config",
                prefix: str = "") -> Iterator[tuple[str, TrinityField]]:
    """Every field path under `root` ('buffer.explorer_input.tasksets[].name', 'x.auxiliary_buffers.*.path')."""
    for f in classes[root]:
        path = f"{prefix}{f.name}"
        yield path, f
        inner, suffix = _inner_classes(f.annotation, classes)
        if inner is not None and not (root == "Config" and f.name == "stages"):
            yield from field_paths(classes, inner, f"{path}{suffix}.")


def render_facts(where: str | Path, version: str) -> str:
    """The text of trinity_facts.py for the Trinity package at `where`."""
    src = Source(where)
    classes, enums = read_schema(src)
    registries = read_registries(src)
    lines = [
        f'"""Trinity-RFT {version}\'s config schema and registered names, as facts (generated; do not edit).',
        "",
        "    python -m rft_runtime.config.trinity_schema WHEEL_OR_SOURCE > runtime/rft_runtime/config/trinity_facts.py",
        '"""',
        "",
        f"TRINITY_VERSION = {version!r}",
        "",
        f"SECTION = {SECTION!r}",
        "",
        "# dataclass -> ((field, annotation as Trinity writes it, default), ...)",
        "CLASSES = {",
    ]
    for name, fields in classes.items():
        lines.append(f"    {name!r}: (")
        lines += [f"        ({f.name!r}, {f.annotation!r}, {f.default!r})," for f in fields]
        lines.append("    ),")
    lines += ["}", "", "ENUMS = {"]
    lines += [f"    {name!r}: {values!r}," for name, values in enums.items()]
    lines += ["}", "", "# registry -> names Trinity knows without plugins", "REGISTRIES = {"]
    lines += [f"    {name!r}: {values!r}," for name, values in registries.items()]
    lines += ["}", ""]
    return "\n".join(lines)


def _version(where: Path) -> str:
    name = where.name
    if name.endswith(".whl"):
        return name.split("-")[1]
    return "unknown"


if __name__ == "__main__":
    target = Path(sys.argv[1])
    sys.stdout.write(render_facts(target, sys.argv[2] if len(sys.argv) > 2 else _version(target)))
