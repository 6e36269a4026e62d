"""`rft manifest` for what a pod can run: warnings naming the field, readable YAML, the no-account smoke example."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ENGINE_IMAGE = "ghcr.io/rft-platform/rft-runtime:0.1.0-engine"
BAKED = "/opt/rft/share/quickstart"  # where the engine image keeps the quickstart's model and data (Dockerfile)


def run_rft(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rft_runtime.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def _laptop_job(tmp_path: Path) -> Path:
    model = tmp_path / "models" / "mine"
    model.mkdir(parents=True)
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "1+1", "answer": "2"}\n')
    cfg = yaml.safe_load((ROOT / "examples" / "tinker.yaml").read_text())
    cfg["model"]["model_path"] = str(model)
    cfg["model"]["tinker"]["base_url"] = "local"
    cfg["buffer"]["explorer_input"]["taskset"]["path"] = str(data)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_manifest_warns_naming_each_field_a_pod_cannot_use(tmp_path):
    result = run_rft("manifest", "--config", str(_laptop_job(tmp_path)), "--name", "laptop")
    assert result.returncode == 0, result.stderr  # a warning, not a refusal: the user may mount these paths
    warnings = [line for line in result.stderr.splitlines() if line.startswith("rft manifest: warning: ")]
    assert len(warnings) == 3, result.stderr
    assert "model.tinker.base_url is 'local'" in warnings[0] and "WITH_ENGINE=true" in warnings[0]
    assert f"model.model_path is '{tmp_path / 'models' / 'mine'}', a path on this machine" in warnings[1]
    assert "buffer.explorer_input.taskset.path" in warnings[2] and "volume mounted in the pod" in warnings[2]
    # the written file says so too, for whoever applies it later
    assert "# warning: model.model_path cannot work in a pod" in result.stdout
    assert yaml.safe_load(result.stdout)["kind"] == "RFTJob"


def test_manifest_is_quiet_for_hub_names_and_the_engine_image(tmp_path):
    result = run_rft("manifest", "--config", "examples/tinker.yaml", "--name", "hub")
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
    result = run_rft("manifest", "--config", "examples/local-engine.yaml", "--name", "smoke", "--image", ENGINE_IMAGE)
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr


def test_manifest_writes_a_chat_template_as_a_block_scalar_that_reads_back_the_same():
    result = run_rft("manifest", "--config", "examples/tinker.yaml", "--name", "tmpl")
    assert result.returncode == 0, result.stderr
    assert "custom_chat_template: |" in result.stdout
    assert "\\\n" not in result.stdout  # no escaped line continuations
    written = yaml.safe_load(result.stdout)["spec"]["config"]["model"]["custom_chat_template"]
    assert written == yaml.safe_load((ROOT / "examples" / "tinker.yaml").read_text())["model"]["custom_chat_template"]


@pytest.mark.parametrize(("example", "config", "args"), [
    ("rftjobs/tinker.yaml", "tinker.yaml", ["--name", "gsm8k-tinker"]),
    ("rftjobs/local-engine.yaml", "local-engine.yaml", ["--name", "smoke-local", "--image", ENGINE_IMAGE]),
])
def test_example_rftjobs_are_what_rft_manifest_writes(example, config, args):
    result = run_rft("manifest", "--config", f"examples/{config}", *args)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout) == yaml.safe_load((ROOT / "examples" / example).read_text())


def test_the_smoke_example_needs_no_account_and_uses_the_engine_image():
    body = yaml.safe_load((ROOT / "examples" / "rftjobs" / "local-engine.yaml").read_text())
    assert body["spec"]["image"] == ENGINE_IMAGE
    assert "tinker" not in body["spec"]  # no Secret to create
    cfg = body["spec"]["config"]
    assert cfg["model"]["tinker"]["base_url"] == "local"
    assert cfg["model"]["model_path"] == f"{BAKED}/model"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"rft engine make-model {BAKED}/model" in dockerfile and f"{BAKED}/data" in dockerfile


@pytest.mark.slow
def test_the_smoke_example_trains_with_the_model_and_data_the_engine_image_bakes(tmp_path):
    # the Dockerfile's two commands, run here, then the example's own config with only the root moved
    baked = tmp_path / "baked"
    made = run_rft("engine", "make-model", str(baked / "model"))
    assert made.returncode == 0, made.stderr
    subprocess.run([sys.executable, "-c", "from pathlib import Path; from rft_runtime.quickstart_task import "
                    f"write_task_files; write_task_files(Path({str(baked / 'data')!r}))"], check=True, timeout=60)
    text = (ROOT / "examples" / "local-engine.yaml").read_text().replace(BAKED, str(baked))
    cfg = yaml.safe_load(text)
    cfg["checkpoint_root_dir"] = str(tmp_path / "ckpt")
    config = tmp_path / "smoke.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    # as in the pod: `rft run` starts the local engine itself
    result = subprocess.run([sys.executable, "-m", "rft_runtime.cli", "run", "--config", str(config), "--no-progress",
                             "--no-metrics"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: 40 steps" in result.stdout
