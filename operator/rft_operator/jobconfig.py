"""Validating `spec.config` with the runtime's models, and the copy of it the pods read.

The ConfigMap carries the user's config, not `resolved_dict()`: resolving would bake the operator's own
environment and absolute paths into it. The job directory is pointed at the storage mount either through
`TRINITY_CHECKPOINT_ROOT_DIR` (when the config reads that variable, as the seeds do) or by overriding
`checkpoint_root_dir` in the copy.

What the operator needs of a validated config is small (`ConfigFacts`): the model itself is dropped after
validation, and `ConfigCache` keeps results by content, so a job whose config did not change is not validated
again on every pass (the models take milliseconds and tens of KB per config).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from rft_operator.spec import CHECKPOINT_ROOT, JobSpec

ROOT_VAR = "TRINITY_CHECKPOINT_ROOT_DIR"
_ENV_REF = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)(?:,[^}]*)?\}")


@dataclass(frozen=True)
class ConfigFacts:
    """What the operator reads of a validated config to shape the pods."""

    backend: str
    algorithm: str
    node_num: int
    gpu_per_node: int
    # (nodes, GPUs per node) a veRL job asks for (JobConfig.gpu_shape)
    gpu_shape: tuple[int, int]


def facts_of(cfg: Any) -> ConfigFacts:
    """The facts of a validated JobConfig."""
    return ConfigFacts(backend=cfg.backend, algorithm=cfg.algorithm.algorithm_type, node_num=cfg.cluster.node_num,
                       gpu_per_node=int(cfg.cluster.gpu_per_node or 0), gpu_shape=tuple(cfg.gpu_shape()))


@dataclass
class ConfigResult:
    """A validated config (facts set) or the reasons it is not (issues set)."""

    facts: ConfigFacts | None = None
    text: str = ""
    pod_env: dict[str, str] = field(default_factory=dict)
    issues: list[str] = field(default_factory=list)
    # the config exactly as the user gave it (before the operator's additions): what the pods' digest covers
    source: Any = None
    # the validated model, for callers that want more than the facts (never cached)
    cfg: Any = None

    @property
    def valid(self) -> bool:
        """True when the runtime would accept this config."""
        return self.facts is not None and not self.issues


def _substitute(obj: Any, values: dict[str, str]) -> Any:
    """Put the pod's own env values into ${oc.env:VAR} references, so validation sees what the pod sees."""
    if isinstance(obj, dict):
        return {k: _substitute(v, values) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, values) for v in obj]
    if isinstance(obj, str) and "${oc.env:" in obj:
        whole = _ENV_REF.fullmatch(obj)
        if whole and whole.group(1) in values:
            return _typed(values[whole.group(1)])
        return _ENV_REF.sub(lambda m: values.get(m.group(1), m.group(0)), obj)
    return obj


def _typed(text: str) -> Any:
    """A whole-value env reference becomes the YAML value it spells (OmegaConf does the same)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _uses_root_var(config: dict[str, Any]) -> bool:
    root = config.get("checkpoint_root_dir")
    return isinstance(root, str) and ROOT_VAR in root


def prepare_config(config: Any, spec: JobSpec, *, job_name: str, namespace: str) -> ConfigResult:
    """Validate the user's config as the pod will run it; build the copy that goes into the ConfigMap."""
    # the runtime's config models load with the first job's config, not with the operator
    from rft_runtime.config import ConfigError, load_config_dict
    from rft_runtime.config.secrets import redact_text

    if not isinstance(config, dict):
        return ConfigResult(issues=[f"spec.config must be a mapping of sections, got {type(config).__name__}"],
                            source=config)
    shipped = copy.deepcopy(config)
    pod_env: dict[str, str] = {}
    if _uses_root_var(config):
        pod_env[ROOT_VAR] = CHECKPOINT_ROOT
    else:
        shipped["checkpoint_root_dir"] = CHECKPOINT_ROOT
    literal_env = {e["name"]: str(e["value"]) for e in spec.env if "name" in e and "value" in e}
    values = {**literal_env, **pod_env}
    try:
        cfg = load_config_dict(_substitute(shipped, values), source="spec.config")
    except ConfigError as exc:
        return ConfigResult(issues=[redact_text(str(issue)) for issue in exc.issues], source=copy.deepcopy(config))
    if cfg.backend == "verl":
        # the head pod starts Ray itself; the runtime joins it there
        shipped.setdefault("cluster", {})
        shipped["cluster"] = {**(shipped.get("cluster") or {}), "ray_address": "auto"}
    text = yaml.safe_dump(shipped, sort_keys=False, allow_unicode=True)
    return ConfigResult(facts=facts_of(cfg), text=text, pod_env=pod_env, source=copy.deepcopy(config), cfg=cfg)


class ConfigCache:
    """`prepare_config` results by what they depend on (the config and the spec's literal env values), the
    model dropped; least recently used entries go past `size`. Safe to share between reconcile threads."""

    def __init__(self, size: int = 512):
        self.size = size
        self._items: OrderedDict[str, ConfigResult] = OrderedDict()
        self._lock = threading.Lock()

    def prepare(self, config: Any, spec: JobSpec, *, job_name: str, namespace: str) -> ConfigResult:
        """What `prepare_config` gives, from the cache when the same input was validated before."""
        literal = sorted((e["name"], str(e["value"])) for e in spec.env if "name" in e and "value" in e)
        blob = json.dumps([config, literal], sort_keys=True, separators=(",", ":"), default=str).encode()
        key = hashlib.sha256(blob).hexdigest()
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
        if hit is not None:
            return replace(hit, source=config)  # the caller's own copy of the job
        result = prepare_config(config, spec, job_name=job_name, namespace=namespace)
        kept = replace(result, cfg=None, source=None)
        with self._lock:
            self._items[key] = kept
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return result


def parse_config_text(text: str, where: str) -> tuple[dict[str, Any] | None, str | None]:
    """YAML from a ConfigMap key as a mapping, or an error message naming where it came from."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, f"{where} is not valid YAML: {exc}"
    if not isinstance(data, dict):
        return None, f"{where} must hold a mapping of config sections"
    return data, None
