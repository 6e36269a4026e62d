"""Writes the config reference (docs/config.md) from the models, so the docs cannot drift from the code.

    python -m rft_runtime.config.reference > docs/config.md
"""

from __future__ import annotations

import json
import sys
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from rft_runtime.config.models import JobConfig

HEADER = """# Job config reference

Generated from `runtime/rft_runtime/config/models.py` by `python -m rft_runtime.config.reference`
(a test fails when this file and the models disagree). Field names and defaults are Trinity-RFT's; every
section rejects unknown keys with a did-you-mean suggestion. `${oc.env:VAR,default}` works in any value.

What differs from Trinity-RFT 0.6:
- `model.tinker.base_model` is accepted (null means `model.model_path`); Trinity rejects the seed for it.
- Algorithms the Tinker backend cannot run are refused when the config is loaded, with the list of those it
  can: grpo, opmd, sft, rloo, reinforceplusplus. rloo and reinforceplusplus run on Tinker here because their
  advantages need only the group's rewards (Trinity refuses them).
- With `model.tinker.enable: true`, `trainer.trainer_type` becomes `tinker`, `synchronizer.sync_method`
  defaults to `checkpoint` (the only method Tinker has), and `model.lora_configs` is ignored with one warning.
- `stages` run on Tinker too; each stage is merged onto the top-level config.
- The API key comes from `TRINITY_API_KEY` (the seed's name) or `TINKER_API_KEY` (the SDK's), never from the
  file, and is never printed or written.
"""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is list:
        (inner,) = typing.get_args(annotation) or (Any,)
        return f"list[{_type_name(inner)}]"
    if origin is dict:
        return "mapping"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "(section)"
    else:
        return "required"
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(value)}`"


def _section_classes(annotation: Any) -> list[type[BaseModel]]:
    out = []
    for arg in typing.get_args(annotation) or (annotation,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            out.append(arg)
        elif typing.get_args(arg):
            out.extend(_section_classes(arg))
    return out


def render() -> str:
    """The whole reference as Markdown."""
    lines = [HEADER]
    queue: list[tuple[str, type[BaseModel]]] = [("(top level)", JobConfig)]
    seen: set[tuple[str, type]] = set()
    while queue:
        path, cls = queue.pop(0)
        if (path, cls) in seen:
            continue
        seen.add((path, cls))
        lines.append(f"## `{path}`\n")
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        lines.append(f"{doc}\n")
        lines.append("| key | type | default | meaning |")
        lines.append("| --- | --- | --- | --- |")
        for name, field in cls.model_fields.items():
            kids = _section_classes(field.annotation)
            child_path = name if path == "(top level)" else f"{path}.{name}"
            if typing.get_origin(field.annotation) is list or "list[" in _type_name(field.annotation):
                child_path += "[]"
            for kid in kids:
                queue.append((child_path, kid))
            kind = _type_name(field.annotation)
            lines.append(f"| `{name}` | {kind} | {_default(field)} | {field.description or ''} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
