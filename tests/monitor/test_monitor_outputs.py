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


def _two_stage_records(sft: int = 30, rl: int = 40) -> list[dict]:
    """An SFT warm-up (cross-entropy falling from about 5) then GRPO (loss about 0, 0/1 reward)."""
    out = []
    for i in range(1, sft + 1):
        out.append({"step": i, "total_steps": sft + rl, "stage": "sft_warmup", "algorithm": "sft",
                    "stage_step": i, "stage_total_steps": sft, "actor/sft_loss": 5.0 / i})
    for i in range(1, rl + 1):
        reward = float(i % 3 == 0)
        out.append({"step": sft + i, "total_steps": sft + rl, "stage": "grpo", "algorithm": "grpo",
                    "stage_step": i, "stage_total_steps": rl, "actor/pg_loss": 0.01 * (-1) ** i,
                    "critic/rewards/mean": reward, "rollout/accuracy/mean": reward, "critic/rewards/min": 0.0,
                    "critic/rewards/max": 1.0})
    return out


def _axes_of(records, evals=None):
    """The Figure write_plot draws, captured at savefig (what a user sees in the PNG)."""
    from matplotlib.figure import Figure

    from rft_runtime.monitor.plot import write_plot

    seen = {}
    real = Figure.savefig

    def keep(self, *args, **kwargs):
        seen["fig"] = self
        return real(self, *args, **kwargs)

    Figure.savefig = keep
    try:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            write_plot(records, Path(tmp) / "c.png", title="t", evals=evals)
    finally:
        Figure.savefig = real
    return seen["fig"].axes


def test_close_writes_the_reward_and_loss_png(tmp_path, cfg):
    with Monitor(cfg, tmp_path, progress=False) as mon:
        for rec in _records(5):
            mon.log_step(rec)
    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert _png_size(png) == (1100, 700)


def test_plot_gives_each_stage_its_own_loss_axes_and_marks_where_stages_change():
    axes = _axes_of(_two_stage_records())
    reward_ax, *loss_axes = axes
    assert [ax.get_ylabel() for ax in loss_axes] == ["cross-entropy", "grpo loss"]
    assert [ax.get_title() for ax in loss_axes] == ["sft_warmup (sft)", "grpo"]
    # the GRPO loss (about 0.01) is not squashed by the cross-entropy (up to 5): its own y range
    lo, hi = loss_axes[1].get_ylim()
    assert hi - lo < 0.1
    texts = {t.get_text() for t in reward_ax.texts}
    assert {"sft_warmup", "grpo"} <= texts
    assert any(line.get_xdata()[0] == line.get_xdata()[-1] == 30.5 for line in reward_ax.lines)  # stage marker


def test_plot_smooths_the_reward_draws_no_band_for_01_rewards_and_shows_the_evaluations():
    evals = [{"step": 0, "taskset": "held-out", "accuracy": 0.0}, {"step": 30, "taskset": "held-out", "accuracy": 0.4},
             {"step": 70, "taskset": "held-out", "accuracy": 0.6}]
    reward_ax = _axes_of(_two_stage_records(), evals)[0]
    labels = [line.get_label() for line in reward_ax.lines]
    assert "reward, each step" in labels and any(label.startswith("reward, mean of") for label in labels)
    raw = next(line for line in reward_ax.lines if line.get_label() == "reward, each step")
    assert raw.get_alpha() is not None and raw.get_alpha() < 0.5  # the raw curve is faint
    smoothed = next(line for line in reward_ax.lines if line.get_label().startswith("reward, mean of"))
    assert 0 < min(smoothed.get_ydata()) and max(smoothed.get_ydata()) < 1  # averaged, not 0/1 spikes
    assert not reward_ax.collections  # no min..max band filling 0..1
    assert not any(label.startswith("accuracy") for label in labels)  # identical to the reward: not drawn twice
    ev = next(line for line in reward_ax.lines if line.get_label() == "held-out accuracy (eval)")
    assert list(ev.get_xdata()) == [0, 30, 70] and list(ev.get_ydata()) == [0.0, 0.4, 0.6]
    assert {"0%", "40%", "60%"} <= {t.get_text() for t in reward_ax.texts}


def test_a_short_rl_stage_says_reward_not_mean_of_1_steps():
    reward_ax, *loss_axes = _axes_of(_two_stage_records(sft=4, rl=6))
    labels = [line.get_label() for line in reward_ax.lines]
    assert "reward" in labels and not any("mean of" in label for label in labels)
    assert [line.get_label() for line in loss_axes[1].lines] == ["grpo loss"]
    # twenty steps or more are averaged, and the legend says over how many
    labels = [line.get_label() for line in _axes_of(_two_stage_records(sft=4, rl=20))[0].lines]
    assert "reward, mean of 4 steps" in labels and "reward, each step" in labels


def test_plot_of_an_older_file_without_stage_keys_still_splits_sft_from_rl():
    # and with the metric names the runtime wrote before it took Trinity's
    legacy = {"actor/sft_loss": "policy_loss", "actor/pg_loss": "policy_loss", "critic/rewards/mean": "reward_mean",
              "rollout/accuracy/mean": "accuracy"}
    records = [{legacy.get(k, k): v for k, v in r.items() if k not in ("stage", "algorithm")}
               for r in _two_stage_records()]
    loss_axes = _axes_of(records)[1:]
    assert [ax.get_ylabel() for ax in loss_axes] == ["cross-entropy", "policy loss"]


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


def test_rft_plot_on_a_folder_above_the_job_directories_finds_them(tmp_path):
    jobs = [tmp_path / "checkpoints" / "proj" / "grp" / name for name in ("a", "b")]
    for job in jobs:
        job.mkdir(parents=True)
        (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(3)))
    (tmp_path / "checkpoints" / "proj" / "grp" / "a" / "metrics.20260101-000000.jsonl").write_text("{}\n")
    proc = _rft("plot", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    for job in jobs:
        assert f"wrote {job / 'curves.png'} (3 steps)" in proc.stdout
        assert (job / "curves.png").read_bytes()[:8] == PNG_MAGIC
    proc = _rft("plot", str(tmp_path), "--out", str(tmp_path / "x.png"))
    assert proc.returncode == 2 and "2 jobs" in proc.stderr and not (tmp_path / "x.png").exists()


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
    assert lines == ["step 1/2 reward=0.5 acc=0.25 loss=1 (0.10s/step)",
                     "step 2/2 reward=1 acc=0.5 loss=0.5 (0.10s/step)"]


def test_progress_off_still_logs_one_line_per_step_with_its_stage(tmp_path, cfg, caplog):
    # pods run `rft run --no-progress`: no bar, but `kubectl logs` must show the job moving
    with caplog.at_level(logging.INFO, logger="rft_runtime.progress"):
        with Monitor(cfg, tmp_path, progress=False) as mon:
            mon.start_stage("grpo", 40)
            for rec in _two_stage_records(sft=1, rl=2)[1:]:
                mon.log_step(dict(rec, **{"time/step": 1.5}))
    lines = [r.getMessage() for r in caplog.records if r.name == "rft_runtime.progress"]
    assert lines == ["step 2/3 [grpo 1/2] reward=0 loss=-0.01 (1.50s/step)",
                     "step 3/3 [grpo 2/2] reward=0 loss=0.01 (1.50s/step)"]


def _our_warnings(caplog) -> list[str]:
    """Warnings the runtime logged. Not other libraries': a background thread of theirs may log meanwhile (a
    tinker SDK session heartbeat that outlived an earlier test's engine did, failing a CI run)."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("rft_runtime")]


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
    warnings = _our_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert kind in warnings[0] and "not installed" in warnings[0]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
    assert (tmp_path / "curves.png").exists()


def test_monitor_type_none_is_silent(tmp_path, cfg_factory, caplog):
    with caplog.at_level(logging.WARNING), Monitor(cfg_factory(monitor_type="none"), tmp_path, progress=False):
        pass
    assert not _our_warnings(caplog)


def _screen_of(code: str) -> str:
    """What a child process running `code` draws on a terminal (a pty as its stderr)."""
    import os
    import pty
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        code = code.replace("{tmp}", tmp)
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
    return b"".join(chunks).decode("utf-8", "replace").replace("\r", "\n")


def test_a_terminal_gets_a_progress_bar_that_continues_a_resumed_run(tmp_path):
    code = (
        "import sys; from types import SimpleNamespace as NS; from rft_runtime.monitor import Monitor\n"
        f"with Monitor(NS(name='j', monitor=NS(monitor_type='none')), {str(tmp_path)!r}) as m:\n"
        "    for s in (3, 4, 5):\n"
        "        m.log_step({'step': s, 'total_steps': 5, 'critic/rewards/mean': s / 10, 'actor/pg_loss': 0.25,"
        " 'time/step': 0.5})\n"
    )
    screen = _screen_of(code)
    last = [line for line in screen.splitlines() if "/5" in line][-1]
    assert "5/5" in last and "reward=0.5" in last and "loss=0.25" in last
    assert " 2/5" in screen  # a resumed run's bar starts where the run left off, not at zero


def test_a_terminal_gets_one_named_bar_per_stage_with_a_sane_first_rate():
    import re

    code = (
        "import time; from types import SimpleNamespace as NS; from rft_runtime.monitor import Monitor\n"
        "with Monitor(NS(name='j', monitor=NS(monitor_type='none'))," + repr("{tmp}") + ") as m:\n"
        "    for name, n, base in (('sft_warmup', 3, 0), ('grpo', 2, 3)):\n"
        "        m.start_stage(name, n)\n"
        "        for i in range(1, n + 1):\n"
        "            time.sleep(0.3)\n"
        "            m.log_step({'step': base + i, 'total_steps': 5, 'stage': name, 'stage_step': i,\n"
        "                        'stage_total_steps': n, 'critic/rewards/mean': 0.123456, 'actor/pg_loss': 0.25})\n"
    )
    screen = _screen_of(code)
    sft = [line for line in screen.splitlines() if line.startswith("sft_warmup")]
    grpo = [line for line in screen.splitlines() if line.startswith("grpo")]
    assert sft and "3/3" in sft[-1] and grpo and "2/2" in grpo[-1]
    assert not [line for line in sft + grpo if "/5" in line]  # counted per stage, not across the job
    assert "reward=0.123" in grpo[-1] and "loss=0.25" in grpo[-1]  # the postfix is whole
    rates = [float(r) for r in re.findall(r"([\d.]+)step/s", screen)]
    assert rates and max(rates) < 20  # steps 0.3 s apart: no 14463 step/s on the first one
