"""base_url: local with a model the local engine cannot have: `rft validate` says so, `rft run` stops first.

The local engine trains a model directory on this machine and downloads nothing, so a Hugging Face Hub name
there is a mistake whatever the job does; it used to pass `rft validate` and stop `rft run` only after the
datasets were loaded (tens of seconds of Hub retries with no network).
"""

from __future__ import annotations

import subprocess

import pytest

from tests.runtime.test_run_support import clean_env, job_dict, job_dir, rft, write_config

HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _cli(*args: str, cwd, env=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(rft(*args), capture_output=True, text=True, cwd=cwd, env=env or clean_env(), timeout=120)


def _job(tmp_path, model: str, base_url: str = "local", **overrides) -> str:
    cfg = job_dict(tmp_path, tmp_path, base_url, name="hub", **overrides)
    cfg["model"]["model_path"] = model
    return str(write_config(tmp_path / "job.yaml", cfg))


def test_validate_refuses_a_hub_name_for_the_local_engine_naming_the_field_and_what_to_do(tmp_path):
    proc = _cli("validate", "-c", _job(tmp_path, HUB_NAME), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "valid" not in proc.stdout
    problem = next(line for line in proc.stderr.splitlines() if HUB_NAME in line)
    assert problem.strip().startswith("model.model_path:")
    assert "base_url is 'local'" in problem and "rft engine make-model" in problem
    assert "model.tinker.base_url: null" in problem  # the other way out: the Tinker service


def test_validate_names_tinker_base_model_when_that_is_what_the_config_set(tmp_path, tiny_model_dir):
    cfg = job_dict(tmp_path, tiny_model_dir, "local", name="hub")
    cfg["model"]["tinker"]["base_model"] = HUB_NAME
    proc = _cli("validate", "-c", str(write_config(tmp_path / "job.yaml", cfg)), cwd=tmp_path)
    assert proc.returncode == 2
    assert f"model.tinker.base_model: '{HUB_NAME}'" in proc.stderr, proc.stderr


def test_validate_accepts_a_model_directory_and_a_hub_name_on_the_tinker_service(tmp_path, tiny_model_dir):
    ok = _cli("validate", "-c", _job(tmp_path, str(tiny_model_dir)), cwd=tmp_path)
    assert ok.returncode == 0 and "valid" in ok.stdout, ok.stderr
    service = _cli("validate", "-c", _job(tmp_path, HUB_NAME, base_url=None), cwd=tmp_path)
    assert service.returncode == 0, service.stderr
    assert HUB_NAME not in service.stderr


@pytest.mark.parametrize("kind", ["a file", "a directory without config.json"])
def test_validate_refuses_a_path_here_that_is_no_model_directory(tmp_path, kind):
    model = tmp_path / "model"
    if kind == "a file":
        model.write_text("not a model")
    else:
        model.mkdir()
    proc = _cli("validate", "-c", _job(tmp_path, str(model)), cwd=tmp_path)
    assert proc.returncode == 2
    assert f"model.model_path: '{model}'" in proc.stderr and "rft engine make-model" in proc.stderr


def test_validate_only_warns_about_a_path_missing_here(tmp_path):
    # it may be a path inside the engine image or on a pod's volume (examples/local-engine.yaml)
    missing = "/opt/models/not-on-this-machine"
    proc = _cli("validate", "-c", _job(tmp_path, missing), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"warning: model.model_path: '{missing}' does not exist here" in proc.stderr


def test_run_stops_on_a_hub_name_before_it_reads_any_dataset(tmp_path):
    # a taskset that would be looked up on the Hub (offline here, so nothing is downloaded whatever happens):
    # the model's error must come first, not the dataset's after its retries
    cfg_path = _job(tmp_path, HUB_NAME, buffer__explorer_input__taskset__path="openai/gsm8k")
    env = clean_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(rft("run", "-c", cfg_path, "--no-metrics", "--no-progress"), capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert f"rft run: model.model_path: '{HUB_NAME}' is a Hugging Face Hub name" in proc.stderr, proc.stderr
    assert "gsm8k" not in proc.stderr and "Retrying" not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not job_dir({"checkpoint_root_dir": str(tmp_path / "ckpt"), "project": "tests", "group": "run",
                        "name": "hub"}).exists()
