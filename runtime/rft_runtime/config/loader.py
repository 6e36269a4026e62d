"""Loading a job config: YAML, `${oc.env:...}` interpolation, validation with every problem reported at once.

Validation runs in rounds: pydantic checks types and ranges; every key it rejects is pruned (so the default
takes its place) and the rest is validated again, so the cross-field checks in `checks` still run and a user
sees all problems of a file in one go instead of fixing them one run at a time.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rft_runtime.config.errors import ConfigError, ConfigIssue, did_you_mean, short, suggest
from rft_runtime.config.layers import deep_merge, stage_data
from rft_runtime.config.models import STAGE_KEYS, JobConfig
from rft_runtime.config.paths import unwrap

_MAX_ROUNDS = 8


# ---------------------------------------------------------------- paths


def format_path(loc: Sequence[Any]) -> str:
    """('stages', 0, 'buffer') -> 'stages[0].buffer'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The config section class found by following `loc` from JobConfig (None past free-form dicts)."""
    current: list[Any] = [JobConfig]
    for part in loc:
        if isinstance(part, int):
            continue
        nxt: list[Any] = []
        for cls in current:
            if isinstance(cls, type) and issubclass(cls, BaseModel):
                field = cls.model_fields.get(part)
                if field is not None:
                    nxt.extend(unwrap(field.annotation))
                else:
                    # a key of a dict[str, Section] field: stay on the dict's value class
                    nxt.append(cls)
        current = [c for c in nxt if isinstance(c, type) and issubclass(c, BaseModel)]
        if not current:
            return None
    return current[0] if current else None


# ---------------------------------------------------------------- YAML and interpolation


def _yaml_issue(exc: yaml.YAMLError, source: str) -> ConfigIssue:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"
    return ConfigIssue("", f"invalid YAML in {source} at {where}: {problem}; fix the syntax there")


class _TrinityYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader reading floats as YAML 1.2 (and OmegaConf, which Trinity loads with) do: `1e-6`
    is a number, not the string PyYAML's YAML 1.1 rules make of it."""


_TrinityYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse one YAML file into a mapping, or raise ConfigError naming the line of a syntax error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue("", f"cannot read {path}: {exc.strerror or exc}")], str(path)) from None
    try:
        data = yaml.load(text, Loader=_TrinityYamlLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_issue(exc, str(path))], str(path)) from None
    if data is None or data == {}:
        # not even a fragment: usually the wrong file, or one that was truncated
        raise ConfigError([ConfigIssue("", f"{path} is empty (not one setting in it): a job config names at least "
                                           "model.model_path and buffer.explorer_input.taskset, an overlay at "
                                           "least one key")], str(path))
    if not isinstance(data, dict):
        raise ConfigError(
            [ConfigIssue("", f"the top level of {path} must be a mapping of sections, got {type(data).__name__}")],
            str(path),
        )
    return data


def _walk(obj: Any, loc: tuple[Any, ...] = ()) -> Iterable[tuple[tuple[Any, ...], Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, (*loc, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, (*loc, i))
    else:
        yield loc, obj


def _set(obj: Any, loc: Sequence[Any], value: Any) -> None:
    for part in loc[:-1]:
        obj = obj[part]
    obj[loc[-1]] = value


def _delete(obj: Any, loc: Sequence[Any]) -> bool:
    try:
        for part in loc[:-1]:
            obj = obj[part]
        if isinstance(obj, dict) and loc[-1] in obj:
            del obj[loc[-1]]
            return True
        if isinstance(obj, list) and isinstance(loc[-1], int) and loc[-1] < len(obj):
            obj[loc[-1]] = None
            return True
    except (KeyError, IndexError, TypeError):
        pass
    return False


def resolve_interpolations(data: dict[str, Any]) -> tuple[dict[str, Any], list[ConfigIssue]]:
    """Resolve `${oc.env:VAR,default}` and `${section.key}` the way Trinity (OmegaConf) does."""
    interpolated = [(loc, v) for loc, v in _walk(data) if isinstance(v, str) and "${" in v]
    if not interpolated:
        return data, []
    # OmegaConf takes ~50 ms to import: a config without interpolations is validated without it
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    issues: list[ConfigIssue] = []
    try:
        root = OmegaConf.create(data)
    except OmegaConfBaseException as exc:
        return data, [ConfigIssue("", f"cannot interpolate this config: {exc}")]
    out = copy.deepcopy(data)
    for loc, raw in interpolated:
        node: Any = root
        try:
            for part in loc:
                node = node[part]
        except OmegaConfBaseException as exc:
            reason = str(exc).splitlines()[0]
            if "not found" in reason and "Environment variable" in reason:
                reason += "; set it, or give a default as ${oc.env:VAR,default}"
            issues.append(ConfigIssue(format_path(loc), f"cannot resolve {raw!r}: {reason}"))
            _delete(out, loc)
            continue
        if OmegaConf.is_config(node):
            node = OmegaConf.to_container(node, resolve=True)
        _set(out, loc, node)
    return out, issues


# ---------------------------------------------------------------- pydantic errors -> issues


def _clean_loc(loc: Sequence[Any]) -> tuple[Any, ...]:
    # pydantic adds the branch of a union to the location (e.g. 'str', 'list[str]'); users never wrote those
    return tuple(p for p in loc if isinstance(p, int) or ("[" not in p and p not in _UNION_TAGS))


_UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "literal"}


def _issue_from_error(err: dict[str, Any], prefix: tuple[Any, ...]) -> tuple[ConfigIssue, tuple[Any, ...]]:
    loc = _clean_loc(err["loc"])
    path = format_path((*prefix, *loc))
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        section = _model_at(loc[:-1])
        fields = list(section.model_fields) if section else []
        hint = suggest(key, fields)
        where = format_path((*prefix, *loc[:-1])) or "the top level"
        if hint:
            msg = f"unknown key '{key}' in {where}; did you mean '{hint}'?"
        elif fields:
            msg = f"unknown key '{key}' in {where}; valid keys: {', '.join(fields)}"
        else:
            msg = f"unknown key '{key}' in {where}; remove it"
        return ConfigIssue(path, msg), loc
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ", ").split(",") if c.strip()]
        hint = suggest(str(value), choices) if isinstance(value, str) else None
        msg = f"{short(value)} is not a valid choice; use one of: {', '.join(choices)}"
        if hint:
            msg = f"{short(value)} is not a valid choice; did you mean '{hint}'? (one of: {', '.join(choices)})"
        return ConfigIssue(path, msg), loc
    if kind == "missing":
        return ConfigIssue(path, "is required; add it"), loc
    text = err["msg"]
    text = text[0].lower() + text[1:] if text else kind
    return ConfigIssue(path, f"{text}, got {short(value)}"), loc


def validate_structure(
    data: dict[str, Any], prefix: tuple[Any, ...] = ()
) -> tuple[JobConfig | None, list[ConfigIssue]]:
    """Validate with pydantic; prune what it rejects and retry so that the remaining checks can run."""
    issues: list[ConfigIssue] = []
    work = copy.deepcopy(data)
    for _ in range(_MAX_ROUNDS):
        try:
            return JobConfig.model_validate(work), issues
        except ValidationError as exc:
            pruned = False
            for err in exc.errors():
                issue, loc = _issue_from_error(err, prefix)
                if issue not in issues:
                    issues.append(issue)
                pruned |= _delete(work, loc)
            if not pruned:
                break
    return None, issues


# ---------------------------------------------------------------- finishing touches


def _finish(cfg: JobConfig, base_dir: Path | None) -> JobConfig:
    """Make checkpoint_root_dir absolute (a relative one is against `base_dir`, else the working directory).

    Values Trinity derives from others (tinker.base_model, max_model_len, the sync method and trainer type
    on Tinker, a taskset's prompt_type) are not written in: the models derive them (`ModelConfig.context_len`,
    `JobConfig.sync_method`, ...), so a stage that changes what they derive from changes them too.
    """
    root = Path(cfg.checkpoint_root_dir or ".").expanduser()
    if not root.is_absolute():
        root = (base_dir or Path.cwd()) / root
    cfg.checkpoint_root_dir = str(root.resolve())
    return cfg


def _is_fragment(data: dict[str, Any]) -> bool:
    """True for files that name no model and no data: an overlay such as the seed's tinker snippet."""
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    tinker = model.get("tinker") if isinstance(model.get("tinker"), dict) else {}
    return not (model.get("model_path") or tinker.get("base_model") or data.get("buffer") or data.get("stages"))


def _load(data: dict[str, Any], source: str | None, partial: bool, base_dir: Path | None) -> JobConfig:
    # not at the top: the checks read algorithms/, whose modules read config.models and config.paths, and
    # importing those runs this package's __init__, which imports this module (`import rft_runtime.algorithms`
    # would stop half-way); the models sit below the algorithms, the checks above them
    from rft_runtime.config.checks import check_config

    data, issues = resolve_interpolations(data)
    # a value that could not be resolved is reported once: a check that then misses it would only repeat it
    unresolved = [i.path for i in issues]
    cfg, structural = validate_structure(data)
    issues += structural
    warnings: list[str] = []
    found: list[ConfigIssue] = []
    if cfg is not None:
        if not cfg.stages:
            found = check_config(cfg, data, partial, warnings)
        else:
            for index, stage in enumerate(data.get("stages") or []):
                found += _check_stage(data, stage, index, partial, warnings, issues + found)
    issues += [i for i in found if i not in issues and not any(
        i.path == p or i.path.startswith((f"{p}.", f"{p}[")) for p in unresolved)]
    if issues:
        raise ConfigError(issues, source)
    assert cfg is not None
    _finish(cfg, base_dir)
    cfg._warnings = list(dict.fromkeys(warnings))
    cfg._partial = partial
    return cfg


def _check_stage(
    base: dict[str, Any], stage: Any, index: int, partial: bool, warnings: list[str], seen: list[ConfigIssue]
) -> list[ConfigIssue]:
    from rft_runtime.config.checks import check_config  # not at the top: see _load

    where = f"stages[{index}]"
    if not isinstance(stage, dict):
        return [ConfigIssue(where, f"a stage must be a mapping with stage_name and sections, got {short(stage)}")]
    issues: list[ConfigIssue] = []
    if not stage.get("stage_name"):
        issues.append(ConfigIssue(f"{where}.stage_name", "is required; name each stage"))
    for key in stage:
        if key not in STAGE_KEYS:
            did = did_you_mean(str(key), STAGE_KEYS)
            issues.append(ConfigIssue(f"{where}.{key}", f"a stage cannot set '{key}'; {did}a stage holds: "
                                                         f"{', '.join(STAGE_KEYS)}"))
    merged = stage_data(base, stage)
    cfg, structural = validate_structure(merged)
    for issue in structural:
        # problems in keys the stage sets are the stage's; the rest were already reported for the base
        first = issue.path.split(".")[0].split("[")[0]
        if first in stage:
            issues.append(ConfigIssue(f"{where}.{issue.path}", issue.message, issue.soft))
    if cfg is not None:
        for issue in check_config(cfg, merged, partial, warnings):
            first = issue.path.split(".")[0].split("[")[0]
            moved = ConfigIssue(f"{where}.{issue.path}", issue.message, issue.soft) if first in stage else issue
            if moved not in seen and moved not in issues:
                issues.append(moved)
    return issues


# ---------------------------------------------------------------- public API


def read_layers(paths: str | Path | Sequence[str | Path]) -> dict[str, Any]:
    """The files of a repeated --config, each overlaid on the ones before it (later files win)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise ConfigError([ConfigIssue("", "no config file given")])
    data: dict[str, Any] = {}
    for path in paths:
        data = deep_merge(data, read_yaml(path))
    return data


def load_config(
    paths: str | Path | Sequence[str | Path], *, partial: bool | None = False, base_dir: str | Path | None = None
) -> JobConfig:
    """Load, interpolate and validate a job config; later files are overlays on earlier ones.

    `partial=True` accepts a fragment (like the seed's `tinker-snippet.yaml`) by skipping the checks that
    only a complete job needs (a model, a taskset); `partial=None` does so when the files name neither a
    model nor any data. Raises ConfigError listing every problem found.
    """
    data = read_layers(paths)
    source = ", ".join(str(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths))
    if partial is None:
        partial = _is_fragment(data)
    return _load(data, source, partial, Path(base_dir) if base_dir else None)


def load_config_dict(
    obj: dict[str, Any],
    overlay_on_defaults: bool = False,
    *,
    partial: bool | None = None,
    source: str | None = None,
    base_dir: str | Path | None = None,
) -> JobConfig:
    """Validate a config given as plain data (what the operator has in `spec.config`).

    `overlay_on_defaults=True` treats `obj` as a fragment over the defaults (same as `partial=True`).
    """
    if not isinstance(obj, dict):
        raise ConfigError(
            [ConfigIssue("", f"the config must be a mapping of sections, got {type(obj).__name__}")], source
        )
    is_partial = overlay_on_defaults if partial is None else partial
    return _load(copy.deepcopy(obj), source, is_partial, Path(base_dir) if base_dir else None)
