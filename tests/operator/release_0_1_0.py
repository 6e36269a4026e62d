"""The pods' digest exactly as release 0.1.0 computed it (copied from its builders.py, unchanged).

The upgrade tests play that release with it: jobs whose pods and status carry these digests must be left
alone by the current operator.
"""

from __future__ import annotations

import hashlib
import json


def spec_hash(spec, config):
    """A digest of everything that shapes the pods; when it changes, the pods are recreated."""
    relevant = {
        "config": config.text,
        "image": spec.image,
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
