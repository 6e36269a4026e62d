"""What `rft run` does before any work for jobs this process cannot train itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _rft(args: list[str], cwd: Path, env: dict[str, str], prelude: str = "") -> subprocess.CompletedProcess:
    code = f"{prelude}\nimport sys\nfrom rft_runtime.cli import main\nsys.exit(main({args!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120)


def test_a_verl_job_becomes_trinity_run_on_the_same_file(tmp_path):
    # trinity-rft (and its GPU stack) cannot be installed here; a stand-in on PATH records how it is called
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "called.txt"
    fake = bindir / "trinity"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {record}\necho pid $$ >> {record}\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    config = EXAMPLES / "verl-lora.yaml"
    res = _rft(["run", "--config", str(config), "--no-metrics"], tmp_path, env)
    assert res.returncode == 0, res.stderr
    assert record.read_text().splitlines()[0] == f"run --config {config}"


def test_a_verl_job_without_trinity_says_which_image_to_use(tmp_path):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    res = _rft(["run", "--config", str(EXAMPLES / "verl-lora.yaml"), "--no-metrics"], tmp_path, env)
    assert res.returncode == 2
    assert "trinity-rft" in res.stderr and "model.tinker.enable: true" in res.stderr


def test_a_kl_job_without_torch_fails_before_any_work(tmp_path, tiny_model_dir):
    data = yaml.safe_load((EXAMPLES / "tinker.yaml").read_text())
    # a model the local engine could serve, were torch there
    data["model"]["model_path"] = data["model"]["tinker"]["base_model"] = str(tiny_model_dir)
    data["algorithm"]["kl_loss_fn_args"]["kl_coef"] = 0.01
    data["checkpoint_root_dir"] = str(tmp_path / "ckpt")
    data["model"]["tinker"]["base_url"] = "local"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    # torch made unimportable in that process, as on an image built without the engine extra
    res = _rft(["run", "--config", str(path), "--no-metrics"], tmp_path, dict(os.environ),
               prelude="import sys; sys.modules['torch'] = None")
    assert res.returncode == 1, res.stderr
    assert "algorithm.kl_loss_fn_args.kl_coef" in res.stderr and "torch" in res.stderr
    assert not (tmp_path / "ckpt").exists()  # nothing half-made: no job directory, no engine started
