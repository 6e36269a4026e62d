"""RFT_RAY=1 with no cluster anywhere: `rft run` starts Ray itself (nothing to run by hand first), runs the
workflow runners on it, and leaves no Ray process behind when it exits."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from test_run_support import clean_env, job_dict, metrics, rft, write_config  # noqa: E402

pytest.importorskip("ray", reason="ray is in the runtime extra (pip install -e '.[runtime]'); CI has it")


def _processes_naming(marker: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


@pytest.fixture
def private_ray_tmp():
    """A Ray temp folder of this test's own: Ray's 'auto' looks for running clusters there, so it finds none
    (not a cluster someone else runs on this machine), and every process it starts names it."""
    path = tempfile.mkdtemp(prefix="rftloc-", dir="/tmp")
    try:
        yield path
    finally:
        for pid in _processes_naming(path):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_rft_ray_1_starts_a_local_ray_and_stops_it(tmp_path, tiny_model_dir, local_engine, private_ray_tmp):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, steps=2, batch=2, repeat=2, name="local-ray",
                   explorer__runner_per_model=2)
    env = clean_env(RFT_RAY="1", RAY_TMPDIR=private_ray_tmp, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(rft("run", "--config", str(write_config(tmp_path / "job.yaml", cfg)), "--no-progress",
                              "--no-metrics"), capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "started a local Ray with" in proc.stderr
    assert "2 workflow runners on 1 Ray node(s)" in proc.stderr
    records = metrics(cfg)
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["rollouts"] == 4 and r["failed_rollouts"] == 0 for r in records)
    # the local Ray (GCS, raylet, workers) went with the job (its processes get a few seconds to exit)
    deadline = time.monotonic() + 15
    while _processes_naming(private_ray_tmp) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_naming(private_ray_tmp) == []
