"""An empty config file is a mistake (the wrong file, a truncated one), not a valid fragment: Trinity refuses it too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _rft(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rft_runtime.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n", "{}\n"])
@pytest.mark.parametrize("command", [["validate"], ["validate", "--partial"], ["config", "show"], ["run"]])
def test_an_empty_config_file_is_an_error_naming_the_file(tmp_path, text, command):
    empty = tmp_path / "job.yaml"
    empty.write_text(text)
    proc = _rft(*command, "-c", str(empty), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{empty} is empty" in proc.stderr and "model.model_path" in proc.stderr
    assert "valid" not in proc.stdout and "Traceback" not in proc.stderr


def test_an_empty_overlay_is_named_among_good_files(tmp_path):
    empty = tmp_path / "overlay.yaml"
    empty.write_text("")
    proc = _rft("validate", "-c", str(EXAMPLES / "tinker.yaml"), "-c", str(empty), cwd=tmp_path)
    assert proc.returncode == 2
    assert f"{empty} is empty" in proc.stderr
