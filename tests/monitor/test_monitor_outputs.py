"""What a user sees besides Prometheus: the PNG, `rft plot`, the progress lines, the tracker warning."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys

import pytest

from rft_runtime.monitor import Monitor

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _records(n: int, with_reward: bool = True) -> list[dict]:
    out = []
    for step in range(1, n + 1):
        rec = {"step": step, "total_steps": n, "actor/pg_loss": 1.0 / step, "time/step": 0.1}
        if with_reward:
            rec.update({"critic/rewards/mean": step / n, "critic/rewards/min": 0.0, "critic/rewards/max": 1.0,
                        "rollout/accuracy/mean": step / (2 * n)})
        out.append(rec)
    return out


def _png_size(path) -> tuple[int, int]:
    import matplotlib.image

    height, width = matplotlib.image.imread(path).shape[:2]
    return width, height


def test_close_writes_the_reward_and_loss_png(tmp_path, cfg):
    with Monitor(cfg, tmp_path, progress=False) as mon:
        for rec in _records(5):
            mon.log_step(rec)
    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert _png_size(png) == (1000, 400)


def test_close_without_steps_writes_no_plot_and_does_not_fail(tmp_path, cfg):
    Monitor(cfg, tmp_path, progress=False).close()
    assert not (tmp_path / "curves.png").exists()


def _rft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rft_runtime.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_rft_plot_cli_writes_the_png_where_asked(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    # an sft job (no reward) that was resumed once: step 3 appears twice, the later line counts
    lines = _records(4, with_reward=False) + [{"step": 3, "total_steps": 4, "actor/pg_loss": 0.2}]
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "plots" / "my.png"
    proc = _rft("plot", str(job), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 5000
    proc = _rft("plot", str(job))
    assert proc.returncode == 0, proc.stderr
    assert (job / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_rft_plot_on_a_job_without_metrics_says_so(tmp_path):
    proc = _rft("plot", str(tmp_path))
    assert proc.returncode == 1
    assert "no step records" in proc.stderr and "metrics.jsonl" in proc.stderr
    assert not (tmp_path / "curves.png").exists()


def test_progress_lines_show_step_reward_and_loss_when_not_on_a_terminal(tmp_path, cfg, caplog):
    # pytest's stderr is not a terminal: the Monitor logs a line per step, as it does in a pod
    with caplog.at_level(logging.INFO, logger="rft_runtime.progress"):
        with Monitor(cfg, tmp_path, progress=True) as mon:
            for rec in _records(2):
                mon.log_step(rec)
    lines = [r.getMessage() for r in caplog.records if r.name == "rft_runtime.progress"]
    assert lines == ["step 1/2 reward=0.5 acc=0.25 loss=1 s/step=0.1",
                     "step 2/2 reward=1 acc=0.5 loss=0.5 s/step=0.1"]


def test_progress_off_logs_no_step_lines(tmp_path, cfg, caplog):
    with caplog.at_level(logging.INFO, logger="rft_runtime.progress"):
        with Monitor(cfg, tmp_path, progress=False) as mon:
            mon.log_step(_records(1)[0])
    assert not [r for r in caplog.records if r.name == "rft_runtime.progress"]


@pytest.mark.parametrize("kind", ["tensorboard", "wandb"])
def test_missing_tracker_package_gives_one_warning_and_the_run_goes_on(tmp_path, cfg_factory, caplog, kind):
    if kind == "tensorboard" and (importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")):
        pytest.skip("tensorboard is installed here")
    if kind == "wandb" and importlib.util.find_spec("wandb"):
        pytest.skip("wandb is installed here")
    with caplog.at_level(logging.WARNING):
        with Monitor(cfg_factory(monitor_type=kind), tmp_path, metrics_port=0, progress=False) as mon:
            for rec in _records(3):
                mon.log_step(rec)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert kind in warnings[0] and "not installed" in warnings[0]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
    assert (tmp_path / "curves.png").exists()


def test_monitor_type_none_is_silent(tmp_path, cfg_factory, caplog):
    with caplog.at_level(logging.WARNING), Monitor(cfg_factory(monitor_type="none"), tmp_path, progress=False):
        pass
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_terminal_gets_a_progress_bar_that_continues_a_resumed_run(tmp_path):
    import os
    import pty

    code = (
        "import sys; from types import SimpleNamespace as NS; from rft_runtime.monitor import Monitor\n"
        f"with Monitor(NS(name='j', monitor=NS(monitor_type='none')), {str(tmp_path)!r}) as m:\n"
        "    for s in (3, 4, 5):\n"
        "        m.log_step({'step': s, 'total_steps': 5, 'critic/rewards/mean': s / 10, 'actor/pg_loss': 0.25,"
        " 'time/step': 0.5})\n"
    )
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-c", code], stderr=slave, stdout=subprocess.DEVNULL)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # the child closed its end
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
    screen = b"".join(chunks).decode("utf-8", "replace").replace("\r", "\n")
    last = [line for line in screen.splitlines() if "/5" in line][-1]
    assert "5/5" in last and "reward=0.5" in last and "loss=0.25" in last and "s/step=0.5" in last
    assert " 2/5" in screen  # a resumed run's bar starts where the run left off, not at zero
