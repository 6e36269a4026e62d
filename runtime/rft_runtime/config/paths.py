"""Dotted paths into the job config, taken from the models: a problem found outside the config layer (an
algorithm's own check, say) names its field as `JOB.algorithm.policy_loss_fn_args["mu"]`, and a misspelt
field is an AttributeError when that module is imported, not a wrong path in a user's error message.

    from rft_runtime.config.paths import JOB
    str(JOB.buffer.trainer_input.auxiliary_buffers["sft_dataset"].path)
    # 'buffer.trainer_input.auxiliary_buffers.sft_dataset.path'
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from rft_runtime.config.models import JobConfig


def unwrap(annotation: Any) -> list[Any]:
    """The classes inside Optional / list / dict / union annotations."""
    origin = typing.get_origin(annotation)
    if origin is None:
        return [annotation]
    out: list[Any] = []
    args = typing.get_args(annotation)
    if origin in (list, tuple, set, Sequence):
        for a in args:
            out.extend(unwrap(a))
    elif origin is dict:
        if len(args) == 2:
            out.extend(unwrap(args[1]))
    elif origin in (typing.Union, types.UnionType):
        for a in args:
            out.extend(unwrap(a))
    elif origin is typing.Annotated:
        out.extend(unwrap(args[0]))
    return out


def _container(annotation: Any) -> str | None:
    """'list' or 'dict' when the annotation (inside Optional) is one, else None."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds = {_container(a) for a in typing.get_args(annotation) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    if origin in (list, tuple, set, Sequence):
        return "list"
    if origin is dict or annotation is dict:
        return "dict"
    return None


class FieldPath:
    """A path into the config, built attribute by attribute from a section class, each step checked against
    that class's fields; `[key]` goes into a mapping (a key of it, or of free-form args) or `[i]` a list."""

    __slots__ = ("_text", "_model", "_container")

    def __init__(self, model: type[BaseModel] | None, text: str = "", container: str | None = None):
        self._model = model
        self._text = text
        self._container = container

    def __getattr__(self, name: str) -> FieldPath:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._model is None or self._container is not None:
            raise AttributeError(f"{self._text} holds no fields; use [{name!r}] for a key")
        field = self._model.model_fields.get(name)
        if field is None:
            raise AttributeError(f"{self._model.__name__} has no field {name!r} (at {self._text or 'the top'})")
        sections = [c for c in unwrap(field.annotation) if isinstance(c, type) and issubclass(c, BaseModel)]
        text = f"{self._text}.{name}" if self._text else name
        return FieldPath(sections[0] if sections else None, text, _container(field.annotation))

    def __getitem__(self, key: str | int) -> FieldPath:
        if self._container == "list":
            if not isinstance(key, int):
                raise KeyError(f"{self._text} is a list: index it with a number")
            return FieldPath(self._model, f"{self._text}[{key}]")
        if self._container == "dict" or self._model is None:
            return FieldPath(self._model if self._container == "dict" else None, f"{self._text}.{key}")
        raise KeyError(f"{self._text} is a section: name its field as an attribute")

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"FieldPath({self._text!r})"

    def __eq__(self, other: object) -> bool:
        return str(self) == str(other)

    def __hash__(self) -> int:
        return hash(self._text)


# the root of every path: JOB.algorithm.kl_loss_fn is 'algorithm.kl_loss_fn'
JOB = FieldPath(JobConfig)
