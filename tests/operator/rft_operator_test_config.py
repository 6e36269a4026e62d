"""A seed config with no external tracker, for tests that run runtime pieces."""

from __future__ import annotations

from typing import Any

from rftjob_bodies import seed


def quiet_tinker_config() -> Any:
    """The Tinker seed, loaded, with monitor_type none (no W&B login in tests)."""
    from rft_runtime.config import load_config_dict

    config = seed("tinker.yaml")
    config["monitor"] = {"monitor_type": "none"}
    return load_config_dict(config)
