"""Where the workflow runners run (RFT_RAY, RAY_ADDRESS, cluster.ray_address, cluster.node_num), as `rft validate`
reports it: decided before any Ray process starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from test_run_support import clean_env, job_dict, rft, write_config  # noqa: E402

from rft_runtime.config import load_config_dict  # noqa: E402
from rft_runtime.loop.errors import RunError  # noqa: E402
from rft_runtime.loop.explorer import explorer_uses_ray  # noqa: E402


@pytest.fixture
def no_ray_env(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RFT_RAY", raising=False)
    return monkeypatch


def _cfg(tmp_path, **overrides):
    return load_config_dict(job_dict(tmp_path, tmp_path, "http://127.0.0.1:9", **overrides))


def test_a_job_without_a_cluster_runs_its_workflows_in_process(tmp_path, no_ray_env):
    assert explorer_uses_ray(_cfg(tmp_path)) is False
    no_ray_env.setenv("RFT_RAY", "1")
    assert explorer_uses_ray(_cfg(tmp_path)) is True


@pytest.mark.parametrize(("env", "cluster"), [
    ({"RAY_ADDRESS": "10.0.0.5:6379"}, {}),
    ({}, {"ray_address": "ray://head:10001"}),
    ({}, {"node_num": 3}),
])
def test_a_named_cluster_puts_the_runners_on_ray(tmp_path, no_ray_env, env, cluster):
    for key, value in env.items():
        no_ray_env.setenv(key, value)
    assert explorer_uses_ray(_cfg(tmp_path, cluster=cluster)) is True


def test_opting_out_while_a_cluster_is_named_is_refused_naming_both(tmp_path, no_ray_env):
    no_ray_env.setenv("RFT_RAY", "0")
    with pytest.raises(RunError, match=r"RFT_RAY=0 .*cluster.node_num: 2"):
        explorer_uses_ray(_cfg(tmp_path, cluster={"node_num": 2}))
    no_ray_env.setenv("RFT_RAY", "maybe")
    with pytest.raises(RunError, match="RFT_RAY='maybe': use 1"):
        explorer_uses_ray(_cfg(tmp_path))


def test_a_multi_node_tinker_job_validates_and_says_where_its_runners_go(tmp_path):
    cfg = job_dict(tmp_path, tmp_path, "http://127.0.0.1:9", cluster={"node_num": 3, "gpu_per_node": 0})
    env = clean_env()
    env.pop("RAY_ADDRESS", None)
    env.pop("RFT_RAY", None)
    proc = subprocess.run(rft("validate", "--config", str(write_config(tmp_path / "job.yaml", cfg))),
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "8 Ray actors (cluster.node_num: 3)" in proc.stdout
    # node_num is honoured now, not listed among the settings without effect
    assert "cluster.node_num" not in proc.stderr.split("no effect on the Tinker backend:")[-1].splitlines()[0]
