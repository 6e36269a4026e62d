"""The trainer against servers that misbehave: one where nothing listens (real sockets), a loss that raises
on this machine (real engine), and a server whose forward_backward reports no loss (the real engine's
answer with its metrics removed: the one fault the engine cannot be made to produce)."""

from __future__ import annotations

import dataclasses
import logging
import socket
import time

import pytest
from test_run_support import job_dict, run_cli, write_config

from rft_runtime.backends.errors import BackendError
from rft_runtime.backends.tinker_client import Connection
from rft_runtime.config import load_config_dict
from rft_runtime.loop.trainer import StepWork, Trainer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_base_url_where_nothing_listens_fails_within_sync_timeout_naming_the_url(tmp_path, tiny_model_dir):
    url = f"http://127.0.0.1:{_free_port()}"
    cfg = job_dict(tmp_path, tiny_model_dir, url, name="nolisten", steps=1)
    cfg["synchronizer"]["sync_timeout"] = 4
    start = time.monotonic()
    res = run_cli(write_config(tmp_path / "job.yaml", cfg), timeout=120)
    elapsed = time.monotonic() - start
    assert res.returncode != 0
    assert url in res.stderr and "within 4s (synchronizer.sync_timeout)" in res.stderr, res.stderr[-2000:]
    assert "nothing answers GET /api/v1/healthz" in res.stderr
    assert elapsed < 60  # the interpreter's start-up plus the 4 s bound, not minutes


def _trainer(tmp_path, tiny_model_dir, base_url) -> tuple[Trainer, Connection]:
    cfg = load_config_dict(job_dict(tmp_path, tiny_model_dir, base_url, name="robust", steps=1))
    conn = Connection(cfg, tmp_path / "job", api_key="tml-local").open()
    trainer = Trainer(cfg, conn)
    trainer.start(None)
    return trainer, conn


def _datum(tokens=(1, 2, 3, 4, 5)):
    import numpy as np
    import tinker

    n = len(tokens) - 1
    return tinker.Datum(model_input=tinker.ModelInput.from_ints(list(tokens[:-1])),
                        loss_fn_inputs={"target_tokens": np.asarray(tokens[1:], dtype=np.int64),
                                        "logprobs": np.zeros(n, dtype=np.float32),
                                        "advantages": np.full(n, 0.25, dtype=np.float32)})


@pytest.mark.slow
def test_a_loss_that_raises_here_is_not_retried(tmp_path, tiny_model_dir, local_engine):
    trainer, conn = _trainer(tmp_path, tiny_model_dir, local_engine.base_url)

    def broken_loss(data, logprobs):
        raise TypeError("a bug in the loss function")

    try:
        start = time.monotonic()
        with pytest.raises(BackendError, match="TypeError: a bug in the loss function.*without retrying"):
            trainer.train(StepWork(1, [_datum()], "custom", None, 1e-4, custom_loss=broken_loss))
        assert time.monotonic() - start < 30
    finally:
        conn.close()


class _NoLossMetrics:
    """The real training client, except that forward_backward's answer carries no metrics."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        return getattr(self._client, name)

    def forward_backward(self, *args, **kwargs):
        fut = self._client.forward_backward(*args, **kwargs)

        class Stripped:
            def result(self, timeout=None):
                return dataclasses.replace(fut.result(timeout=timeout), metrics={})

        return Stripped()


@pytest.mark.slow
def test_a_server_without_loss_metrics_gets_one_warning_and_the_loss_computed_here(
        tmp_path, tiny_model_dir, local_engine, caplog):
    trainer, conn = _trainer(tmp_path, tiny_model_dir, local_engine.base_url)
    try:
        full = trainer.train(StepWork(1, [_datum()], "importance_sampling", None, 1e-4,
                                      metrics_fn=lambda lps: {"actor/pg_loss": -0.25 * sum(sum(lp) for lp in lps)}))
        assert "loss:sum" in full.metrics
        trainer.client = _NoLossMetrics(trainer.client)
        with caplog.at_level(logging.WARNING):
            results = [trainer.train(StepWork(s, [_datum()], "importance_sampling", None, 0.0,
                                              metrics_fn=lambda lps: {"actor/pg_loss": 1.5})) for s in (2, 3)]
        assert [r.loss for r in results] == [1.5, 1.5]
        warnings = [r for r in caplog.records if "returned no loss metric" in r.getMessage()]
        assert len(warnings) == 1 and local_engine.base_url in warnings[0].getMessage()
    finally:
        conn.close()
