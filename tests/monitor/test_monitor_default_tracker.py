"""Trinity's default monitor_type (tensorboard) is no reason to warn a user who never asked for it."""

from __future__ import annotations

import importlib.util
import logging

import pytest

from rft_runtime.config import load_config
from rft_runtime.monitor import Monitor

TENSORBOARD_HERE = bool(importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"))


def _job_file(tmp_path, monitor: str = "") -> str:
    (tmp_path / "train.jsonl").write_text('{"question": "1 + 1", "answer": "2"}\n')
    path = tmp_path / "job.yaml"
    path.write_text(
        "algorithm: {algorithm_type: grpo, repeat_times: 2}\n"
        "model: {model_path: /models/tiny, tinker: {enable: true}}\n"
        "buffer:\n"
        "  batch_size: 1\n"
        "  total_steps: 1\n"
        "  explorer_input:\n"
        "    taskset: {path: train.jsonl, format: {prompt_key: question, response_key: answer}}\n"
        "    default_workflow_type: math_workflow\n"
        + monitor
    )
    return str(path)


def _tracker_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "monitor_type" in r.getMessage()]


@pytest.mark.skipif(TENSORBOARD_HERE, reason="tensorboard is installed here, so the default tracker starts")
def test_a_config_that_names_no_monitor_gets_no_tensorboard_warning(tmp_path, caplog):
    cfg = load_config(_job_file(tmp_path))
    assert cfg.monitor.monitor_type == "tensorboard"  # Trinity's default, kept
    with caplog.at_level(logging.DEBUG), Monitor(cfg, tmp_path / "job", progress=False) as mon:
        mon.log_step({"step": 1, "total_steps": 1, "actor/pg_loss": 0.5})
    assert _tracker_warnings(caplog) == []
    # still findable by whoever looks for it
    assert any("tensorboard" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
    assert (tmp_path / "job" / "metrics.jsonl").read_text().count("\n") == 1


@pytest.mark.skipif(TENSORBOARD_HERE, reason="tensorboard is installed here, so the tracker starts")
@pytest.mark.parametrize("monitor", ["monitor: {monitor_type: tensorboard}\n",
                                     "monitor: {monitor_type: tensorboard, monitor_args: {}}\n"])
def test_a_config_that_asks_for_tensorboard_learns_it_is_missing(tmp_path, caplog, monitor):
    cfg = load_config(_job_file(tmp_path, monitor))
    with caplog.at_level(logging.WARNING), Monitor(cfg, tmp_path / "job", progress=False):
        pass
    (warning,) = _tracker_warnings(caplog)
    assert "tensorboard" in warning and "not installed" in warning and "pip install tensorboard" in warning
