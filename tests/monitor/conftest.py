"""A stand-in job config (the Monitor reads it duck-typed) and a Monitor started on a real port."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from rft_runtime.monitor import Monitor


def make_cfg(name: str = "demo-job", monitor_type: str = "none", algorithm: str = "grpo") -> NS:
    """The few config fields the Monitor reads, shaped like JobConfig."""
    return NS(
        name=name, project="proj", group="grp", backend="tinker",
        algorithm=NS(algorithm_type=algorithm), model=NS(tinker_base_model="/models/tiny"),
        monitor=NS(monitor_type=monitor_type, monitor_args=None),
    )


@pytest.fixture
def cfg_factory():
    return make_cfg


@pytest.fixture
def cfg() -> NS:
    return make_cfg()


@pytest.fixture
def monitor(tmp_path, cfg, monkeypatch):
    monkeypatch.delenv("RFT_JOB_NAME", raising=False)
    monkeypatch.delenv("RFT_METRICS_HOST", raising=False)
    mon = Monitor(cfg, tmp_path / "job", metrics_port=0, progress=False)
    try:
        yield mon
    finally:
        mon.close()
