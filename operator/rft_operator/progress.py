"""status.progress from the runtime pod's own Prometheus endpoint.

The operator scrapes the pod (pull) rather than letting the pod write its RFTJob (push): the pods then need
no API credentials at all, and the operator alone decides how often status is written.
"""

from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from rft_operator.status import timestamp

# runtime metric -> status.progress key
FIELDS = {
    "rft_train_step": "step",
    "rft_total_steps": "totalSteps",
    "rft_reward_mean": "rewardMean",
    "rft_policy_loss": "loss",
}
LAST_PROGRESS = "rft_last_progress_timestamp_seconds"


def parse_progress(text: str) -> dict[str, Any]:
    """status.progress from a Prometheus text exposition (keys absent when the runtime has not said yet)."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in FIELDS or sample.name == LAST_PROGRESS:
                values.setdefault(sample.name, float(sample.value))
    out: dict[str, Any] = {}
    for metric, key in FIELDS.items():
        if metric in values:
            value = values[metric]
            out[key] = int(value) if key in ("step", "totalSteps") else round(value, 6)
    last = values.get(LAST_PROGRESS)
    if last:
        out["lastUpdateTime"] = timestamp(last)
    return out


def scrape(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET a /metrics URL and read the progress fields from it (raises OSError when unreachable)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - a pod IP over http
        return parse_progress(response.read().decode("utf-8", "replace"))
