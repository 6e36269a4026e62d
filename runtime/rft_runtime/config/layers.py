"""Config layers: one mapping laid over another, as a repeated --config and the sections of a stage are.

Plain data only (no models), so that both the loader and `JobConfig.stage_configs` use it.
"""

from __future__ import annotations

import copy
from typing import Any


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`overlay` on top of `base`: mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def stage_data(base: dict[str, Any], stage: dict[str, Any]) -> dict[str, Any]:
    """A stage's complete config as data: the job's sections (without `stages`) with the stage's over them."""
    merged = {k: v for k, v in base.items() if k != "stages"}
    overlay = {k: v for k, v in stage.items() if k != "stage_name"}
    return deep_merge(merged, overlay)
