"""The pods' digest: what the user asked for, never the operator's defaults.

The digest decides whether running pods are replaced and whether a finished job runs again, so it must not
move when only the operator changes (a new release, another `--default-image`, new built-in defaults). It
covers the RFTJob's `spec` as written, minus the fields that apply without touching pods, and the user's
config as given (not the copy the operator ships, which carries the operator's own additions). A new default
reaches a job when its pods are next created (a retry, a resume, a new run).

The previous release (0.1.0) hashed the resolved spec instead; `legacy_digests` recomputes that digest so a
job created by it is recognised as unchanged instead of being restarted.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# spec fields whose changes never reshape a pod: they are applied by the operator without a restart
NOT_HASHED = frozenset({
    "config", "configFrom",  # the config's content is hashed instead of where it comes from
    "suspend", "backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished", "progressDeadlineSeconds",
})
# default images of releases that stored a digest of the resolved image (`--default-image` unset)
PREVIOUS_DEFAULT_IMAGES = ("ghcr.io/rft-platform/rft-runtime:0.1.0",)


def _pruned(value: Any) -> Any:
    """Drop empty values ({}, [], "", None) at any depth: `image: ""` asks for the same as no image."""
    if isinstance(value, dict):
        out = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", {}, [])}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def _digest(value: Any) -> str:
    blob = json.dumps(value, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def user_digest(raw_spec: dict[str, Any], user_config: Any) -> str:
    """The digest of what the user asked for: `spec` as written (less NOT_HASHED) and the config's content."""
    asked = {k: v for k, v in (raw_spec or {}).items() if k not in NOT_HASHED}
    return _digest({"spec": _pruned(asked), "config": user_config})


def legacy_digest(spec: Any, config_text: str, image: str) -> str:
    """The digest release 0.1.0 stored for this spec had it resolved the image to `image`."""
    relevant = {
        "config": config_text,
        "image": image,
        "pull": spec.image_pull_policy,
        "resources": spec.resources,
        "env": spec.env,
        "envFrom": spec.env_from,
        "nodeSelector": spec.node_selector,
        "tolerations": spec.tolerations,
        "affinity": spec.affinity,
        "priority": spec.priority_class_name,
        "sa": spec.service_account_name,
        "secret": spec.api_key_secret,
        "storage": [spec.storage.existing_claim, spec.storage.size],
        "metrics": [spec.metrics_port, spec.metrics_enabled],
    }
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def legacy_digests(spec: Any, config_text: str, pod_images: set[str]) -> set[str]:
    """Every 0.1.0 digest this spec could have been stored under.

    With `spec.image` set the old release hashed exactly that. Without it, the image it resolved is known
    from the job's own pods when they exist; otherwise the candidates are the operator's current default and
    the previous releases' defaults.
    """
    asked = (spec.raw or {}).get("image") or None
    images = {asked} if asked else {*pod_images, spec.image, *PREVIOUS_DEFAULT_IMAGES}
    return {legacy_digest(spec, config_text, image) for image in images}
