"""Fixtures of the operator tests: an emulated API server, a kubeconfig for it, the running operator."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kmock_harness import ApiServer, Client, operator_process


@pytest.fixture()
def api_server() -> Iterator[ApiServer]:
    """A fresh emulated API server for one test."""
    server = ApiServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def client(api_server: ApiServer) -> Client:
    """HTTP client of the emulated server."""
    return Client(api_server.url)


@pytest.fixture()
def kubeconfig(api_server: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kubeconfig naming the emulated server, exported as KUBECONFIG for the operator."""
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": api_server.url}}],
        "users": [{"name": "kmock", "user": {"token": "test"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": "default"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return path


@pytest.fixture()
def operator_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Fast loops for tests: resync every second, scrape progress every half second."""
    env = {
        "RFT_OPERATOR_METRICS_PORT": "0",
        "RFT_OPERATOR_RESYNC_SECONDS": "1",
        "RFT_OPERATOR_PROGRESS_INTERVAL_SECONDS": "0.5",
        "RFT_OPERATOR_STALL_AFTER_SECONDS": "3600",
        "RFT_OPERATOR_SCRAPE_TIMEOUT_SECONDS": "2",
        "RFT_OPERATOR_CONFIG_FROM_REFRESH_SECONDS": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture()
def running_operator(kubeconfig: Path, operator_env: dict[str, str]) -> Iterator[Any]:
    """The real operator running against the emulated server until the test ends."""
    with operator_process() as runner:
        yield runner


@pytest.fixture()
def runtime_endpoint(tmp_path: Path) -> Iterator[tuple[int, Callable[..., None]]]:
    """The runtime's own Prometheus endpoint (rft_runtime.monitor.Monitor) on loopback, standing in for a pod.

    Yields (port, report) where report(step, total, reward, loss, age) logs one step that finished `age`
    seconds ago, exactly as `rft run` logs its steps.
    """
    from rft_operator_test_config import quiet_tinker_config

    from rft_runtime.monitor import Monitor

    cfg = quiet_tinker_config()
    mon = Monitor(cfg, tmp_path / "job", metrics_port=0, progress=False, metrics_host="127.0.0.1")

    def report(step: int, total: int, reward: float | None, loss: float, age: float = 0.0) -> None:
        record = {"step": step, "total_steps": total, "actor/pg_loss": loss, "timestamp": time.time() - age}
        if reward is not None:  # a step whose rollouts all failed reports no reward
            record["critic/rewards/mean"] = reward
        mon.log_step(record)

    try:
        assert mon.port
        yield mon.port, report
    finally:
        mon.close()
