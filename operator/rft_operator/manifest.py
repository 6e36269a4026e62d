"""`rft manifest`: wrap an existing Trinity-style config in an RFTJob for `kubectl apply`."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

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


def manifest_main(args: Any) -> int:
    """Handler of `rft manifest`: validate the config, then print or write the RFTJob (exit 2 on errors)."""
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
    text = header + k8syaml.dump(manifest)
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0
