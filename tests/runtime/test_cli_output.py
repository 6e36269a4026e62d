"""The command line's manners: a closed pipe ends it quietly, library warnings appear once."""

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
