"""`rft manifest`: wrap an existing Trinity-style config in an RFTJob for `kubectl apply`."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

from rft_operator import k8syaml
from rft_operator.kube import GROUP, KIND, VERSION

DEFAULT_SECRET = "tinker-api-key"
DEFAULT_SECRET_KEY = "api-key"
DEFAULT_STORAGE = "20Gi"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def build_manifest(config: dict[str, Any], *, name: str, backend: str, namespace: str | None = None,
                   image: str | None = None, api_key_secret: str | None = None,
                   needs_key: bool = True) -> dict[str, Any]:
    """The RFTJob for a config (the config is embedded as written, interpolations included)."""
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    spec: dict[str, Any] = {}
    if image:
        spec["image"] = image
    if backend == "tinker" and (api_key_secret or needs_key):
        secret, _, key = (api_key_secret or DEFAULT_SECRET).partition(":")
        spec["tinker"] = {"apiKeySecretRef": {"name": secret, "key": key or DEFAULT_SECRET_KEY}}
    # a claim keeps checkpoints across pod retries, so a replaced pod resumes instead of starting over
    spec["storage"] = {"size": DEFAULT_STORAGE}
    spec["backoffLimit"] = 3
    spec["config"] = config
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": metadata, "spec": spec}


class _Dumper(k8syaml._Dumper):
    """k8syaml's rules, plus multi-line strings (a chat template, a system prompt) as `|` block scalars."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        # PyYAML itself falls back to quoting when a block cannot hold the string (trailing spaces, tabs)
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return k8syaml._represent_str(dumper, value)


_Dumper.add_representer(str, _represent_str)


def _dump(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def _path_fields(cfg: Any) -> list[tuple[str, str | None]]:
    """(dotted field, value) of every model and dataset path of the job, its stages included."""
    fields: list[tuple[str, str | None]] = []
    for prefix, stage in [("", cfg)] + [(f"stages[{i}].", s) for i, s in enumerate(cfg.stage_configs())
                                         if cfg.stages]:
        fields.append((f"{prefix}model.model_path", stage.model.model_path))
        fields.append((f"{prefix}model.tinker.base_model", stage.model.tinker.base_model))
        ei = stage.buffer.explorer_input
        fields.append((f"{prefix}buffer.explorer_input.taskset.path", ei.taskset.path))
        for i, ts in enumerate(ei.tasksets):
            fields.append((f"{prefix}buffer.explorer_input.tasksets[{i}].path", ts.path))
        for i, ts in enumerate(ei.eval_tasksets):
            fields.append((f"{prefix}buffer.explorer_input.eval_tasksets[{i}].path", ts.path))
        eb = stage.buffer.trainer_input.experience_buffer
        if eb is not None:
            fields.append((f"{prefix}buffer.trainer_input.experience_buffer.path", eb.path))
    seen: set[str] = set()
    out = []
    for field, value in fields:
        if value and value not in seen:
            seen.add(value)
            out.append((field, value))
    return out


def pod_warnings(cfg: Any, image: str | None) -> list[tuple[str, str]]:
    """(field, why) for what in a valid config cannot work in a pod: the local engine, this machine's paths."""
    warnings: list[tuple[str, str]] = []
    if cfg.backend == "tinker" and cfg.model.tinker.base_url == "local":
        if not (image and "engine" in image):
            warnings.append(("model.tinker.base_url",
                "model.tinker.base_url is 'local': the pod starts the local engine, which only the engine image "
                "has (built with WITH_ENGINE=true, e.g. --image ghcr.io/rft-platform/rft-runtime:0.1.0-engine); "
                "the default image stops with a message that torch is missing. For real training set base_url "
                "to null (the Tinker service) and pass --api-key-secret"))
    for field, value in _path_fields(cfg):
        path = Path(value).expanduser()
        here = path.exists()
        if here or (not path.is_absolute() and value.startswith((".", "~"))):
            where = "a path on this machine" if here else "a relative path"
            warnings.append((field,
                f"{field} is {value!r}, {where}: the pod has its own filesystem and will not find it. Use a "
                "Hugging Face name, a path inside the image, or a volume mounted in the pod"))
    return warnings


def manifest_main(args: Any) -> int:
    """Handler of `rft manifest`: validate the config, then print or write the RFTJob (exit 2 on errors)."""
    # the runtime's config models: only for `rft manifest`, not for the CLI's other subcommands
    from rft_runtime.config import ConfigError, load_config, read_layers

    name = args.name
    if not _NAME.match(name) or len(name) > 50:
        print(f"--name {name!r}: use at most 50 lowercase letters, digits and '-' (a DNS label)", file=sys.stderr)
        return 2
    try:
        raw = read_layers(args.config)
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    base_url = cfg.model.tinker.base_url
    manifest = build_manifest(
        raw, name=name, backend=cfg.backend, namespace=args.namespace, image=args.image,
        api_key_secret=args.api_key_secret, needs_key=base_url != "local",
    )
    sources = " + ".join(args.config) if isinstance(args.config, list) else args.config
    header = f"# RFTJob for {sources} (written by `rft manifest`); apply with: kubectl apply -f <this file>\n"
    if "tinker" in manifest["spec"]:
        ref = manifest["spec"]["tinker"]["apiKeySecretRef"]
        header += (f"# The Tinker API key comes from Secret {ref['name']} key {ref['key']}:\n"
                   f"#   kubectl create secret generic {ref['name']} --from-literal={ref['key']}=$TINKER_API_KEY\n")
    warnings = pod_warnings(cfg, args.image)
    for field, why in warnings:
        print(f"rft manifest: warning: {why}", file=sys.stderr)
        header += f"# warning: {field} cannot work in a pod as written (`rft manifest` said why)\n"
    text = header + _dump(manifest)
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0
