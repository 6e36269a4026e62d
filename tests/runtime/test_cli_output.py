"""The command line's manners: a closed pipe ends it quietly, library warnings appear once, an error exit is
its message alone (no traceback after it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("args", [["config", "schema"], ["config", "show", "--config", "examples/tinker.yaml"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(args):
    # `rft config schema | head`: head exits before the output is written. A pipe whose reader is already
    # closed makes that deterministic (42 kB of schema may otherwise fit in the pipe's buffer in time)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "rft_runtime.cli", *args], stdout=write_end,
                              stderr=subprocess.PIPE, timeout=60, cwd=ROOT)
    finally:
        os.close(write_end)
    assert b"Traceback" not in proc.stderr and b"BrokenPipeError" not in proc.stderr, proc.stderr.decode()
    assert proc.returncode == 141  # what a command killed by SIGPIPE reports to the shell


def test_a_hugging_face_warning_is_printed_once_after_setup_logging():
    code = (
        "from rft_runtime.loop.run import setup_logging\n"
        "setup_logging('INFO')\n"
        "from huggingface_hub.utils import logging as hf_logging\n"
        "hf_logging.get_logger('huggingface_hub.utils._http').warning('Retrying in 1s [Retry 1/5].')\n"
        "import datasets\n"
        "datasets.utils.logging.get_logger('datasets.load').warning('datasets says hello')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("Retrying in 1s [Retry 1/5].") == 1, proc.stderr
    assert proc.stderr.count("datasets says hello") == 1, proc.stderr


def _rft(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed `rft` console script (or, where it is not installed, the same main() it calls)."""
    import shutil

    exe = shutil.which("rft")
    command = [exe] if exe else [sys.executable, "-c", "import sys; from rft_runtime.cli import main; sys.exit(main())"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def _no_traceback(stderr: str) -> None:
    for sign in ("Traceback", "Exception ignored", "Error:"):
        assert sign not in stderr, stderr


def test_a_missing_api_key_is_one_message_and_no_traceback(tmp_path):
    # the tinker SDK was never imported: importing it (and torch) at exit to quiesce it raised in atexit
    env = {k: v for k, v in os.environ.items() if k not in ("TINKER_API_KEY", "TRINITY_API_KEY")}
    proc = _rft(["run", "-c", str(ROOT / "examples" / "tinker.yaml"), "--no-metrics"], tmp_path, env)
    assert proc.returncode == 1, proc.stderr
    assert "rft run: no Tinker API key" in proc.stderr and "TINKER_API_KEY" in proc.stderr
    _no_traceback(proc.stderr)


def test_a_missing_taskset_file_is_one_message_and_no_traceback(tmp_path, tiny_model_dir):
    # torch imported at exit left its Library finalizers to run on torn-down modules ("Exception ignored in")
    config = tmp_path / "job.yaml"
    config.write_text(
        "algorithm: {algorithm_type: grpo, repeat_times: 2}\n"
        f"model: {{model_path: {tiny_model_dir}, tinker: {{enable: true, base_url: local}}}}\n"
        "buffer:\n"
        "  batch_size: 1\n"
        "  total_steps: 1\n"
        "  explorer_input:\n"
        "    taskset: {path: no-such-file.jsonl, format: {prompt_key: question, response_key: answer}}\n"
        "    default_workflow_type: math_workflow\n"
        "monitor: {monitor_type: none}\n"
    )
    proc = _rft(["run", "-c", str(config), "--no-metrics"], tmp_path)
    assert proc.returncode != 0
    assert "no-such-file.jsonl" in proc.stderr and "not found" in proc.stderr, proc.stderr
    _no_traceback(proc.stderr)
