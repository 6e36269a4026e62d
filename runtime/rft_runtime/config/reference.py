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

from rft_runtime.config import catalog, support
from rft_runtime.config.loop_fields import NOTES as LOOP_NOTES
from rft_runtime.config.models import DEFAULT_DIFFERENCES, STAGE_KEYS, JobConfig, Section
from rft_runtime.config.trinity_facts import TRINITY_VERSION

HEADER = f"""# Job config reference

Generated from `runtime/rft_runtime/config/models.py` by `python -m rft_runtime.config.reference`
(a test fails when this file and the models disagree). The schema is Trinity-RFT {TRINITY_VERSION}'s: every
field of its config dataclasses, with its name and default (the exceptions are listed below), so a file
Trinity loads loads here too. Every section rejects unknown keys with a did-you-mean suggestion.
`${{oc.env:VAR,default}}` and `${{section.key}}` work in any value.

**On Tinker** (`model.tinker.enable: true`) this runtime runs the job itself, and Trinity-RFT's own Tinker
mode is the measure. Each field below says what it does there:
- *honoured*: the runtime does what Trinity does with it;
- *no effect*: accepted; it is a vLLM, FSDP or Ray setting of the veRL backend, or (*no effect: why*) a
  setting Trinity's Tinker mode ignores too. `rft validate` lists those a file sets, one line per section, and
  says why for an ignored setting whose value asks for something else;
- *refused when it differs*: the runtime would not do what another value asks (mostly what Trinity's Tinker
  mode does and this runtime does not yet), so any value other than the one its behaviour matches is an
  error at load time that says why.

A few fields do something else where their section sits elsewhere: the cell says so (an auxiliary model's,
a taskset's).

With the veRL backend (`model.tinker.enable: false`) the file is handed to `trinity run` unchanged, so every
field does what Trinity does with it, every algorithm, workflow and reward name Trinity registers is
accepted, and names Trinity does not know (a plugin's) are warnings, not errors.
"""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return " \\| ".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is list:
        (inner,) = typing.get_args(annotation) or (Any,)
        return f"list[{_type_name(inner)}]"
    if origin is dict:
        args = typing.get_args(annotation)
        return f"mapping of {_type_name(args[1])}" if args and args[1] is not Any else "mapping"
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, Section):
        name = _title(annotation)
        return f"[{name}](#{name.lower()})"
    return getattr(annotation, "__name__", str(annotation))


def _title(cls: type[BaseModel]) -> str:
    return getattr(cls, "trinity_name", None) or cls.__name__


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()
    else:
        return "required"
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(value)}`"


def _section_classes(annotation: Any) -> list[type[Section]]:
    out = []
    for arg in typing.get_args(annotation) or (annotation,):
        if isinstance(arg, type) and issubclass(arg, Section):
            out.append(arg)
        elif typing.get_args(arg):
            out.extend(_section_classes(arg))
    return out


def _cell(cls: type[Section], name: str, path: str) -> str:
    kind, rule = support.placed(_title(cls), name, path)
    if kind == support.REFUSED and rule is not None:
        return f"refused when it differs: {rule[1]}"
    if kind == support.NO_EFFECT and rule is not None:
        return f"no effect: {rule[1]}"
    if kind == support.HONOURED and _section_classes(cls.model_fields[name].annotation):
        return "see its section"
    return kind


def _on_tinker(cls: type[Section], name: str) -> str:
    # what it does wherever it is not placed otherwise, then where a place changes that (config.support.PLACES)
    text = _cell(cls, name, "")
    for owner, section, label in support.PLACES:
        there = _cell(cls, name, f"{section}.{name}") if owner == _title(cls) else text
        if there != text:
            text = f"{text}; {label}: {there}"
    return text


def _meaning(cls: type[Section], name: str, description: str | None) -> str:
    # the field's description, then what the loop does with it on Tinker (kept out of the CRD: loop_fields)
    note = LOOP_NOTES.get((_title(cls), name))
    return " ".join(t for t in (description, note) if t)


def _sections() -> list[tuple[type[Section], list[str]]]:
    """Every section class once, in breadth-first order from the top level, with every path it sits at."""
    order: list[type[Section]] = []
    paths: dict[type[Section], list[str]] = {}
    queue: list[tuple[str, type[Section]]] = [("", JobConfig)]
    while queue:
        path, cls = queue.pop(0)
        if cls not in paths:
            order.append(cls)
            paths[cls] = []
        paths[cls].append(path or "(top level)")
        for name, field in cls.model_fields.items():
            origin = typing.get_origin(field.annotation)
            text = _type_name(field.annotation)
            suffix = "[]" if "list[" in text else ".NAME" if origin is dict or "mapping of" in text else ""
            for kid in _section_classes(field.annotation):
                queue.append((f"{path}.{name}{suffix}" if path else f"{name}{suffix}", kid))
    return [(cls, paths[cls]) for cls in order]


def _names() -> list[str]:
    lines = ["## Algorithms, workflows and reward functions\n"]
    lines.append(f"Algorithms Trinity-RFT registers (any runs on veRL): {', '.join(catalog.KNOWN_ALGORITHMS)}.\n")
    lines.append(f"On Tinker: {', '.join(catalog.TINKER_ALGORITHMS)}. The others are refused at load time with "
                 "the reason:\n")
    lines += [f"- `{name}`: {why}" for name, why in catalog.TINKER_REFUSALS.items()]
    lines.append(f"- any other: {catalog.TINKER_REFUSAL_DEFAULT}\n")
    lines.append(f"Workflows this runtime runs on Tinker: {', '.join(f'`{n}`' for n in catalog.known_workflows())}. "
                 f"Reward functions: {', '.join(f'`{n}`' for n in catalog.known_reward_fns())}.\n")
    lines.append(f"Trinity's own workflows (veRL only): {', '.join(catalog.TRINITY_WORKFLOWS)}.\n")
    lines.append(f"Trinity's own reward functions (veRL only): {', '.join(catalog.TRINITY_REWARD_FNS)}.\n")
    lines.append(
        "Your own workflow or reward function is named by its import path, `package.module.ClassName` or "
        "`package.module:ClassName` (Trinity splits the first form on the last dot), in "
        "`default_workflow_type` / `default_reward_fn_type`; its module must be importable where the job runs "
        "(installed, or on PYTHONPATH).\n")
    lines.append("## Stages\n")
    lines.append(f"A `stages` entry holds `stage_name` (required) and any of: "
                 f"{', '.join(f'`{k}`' for k in STAGE_KEYS if k != 'stage_name')}. Each stage's sections are "
                 "merged key by key onto the top-level config, and the stages run in order in one job "
                 "directory.\n")
    lines.append("## Defaults that differ from Trinity's\n")
    lines += [f"- `{path}`: {why}" for path, why in DEFAULT_DIFFERENCES.items()]
    lines.append("")
    return lines


def render() -> str:
    """The whole reference as Markdown."""
    lines = [HEADER, *_names()]
    for cls, paths in _sections():
        lines.append(f"## {_title(cls)}\n")
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        lines.append(f"{doc} At: {', '.join(f'`{p}`' for p in paths)}.\n")
        lines.append("| key | type | default | on Tinker | meaning |")
        lines.append("| --- | --- | --- | --- | --- |")
        for name, field in cls.model_fields.items():
            lines.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | "
                         f"{_on_tinker(cls, name)} | {_meaning(cls, name, field.description)} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
