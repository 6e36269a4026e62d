"""Where the real trinity-rft 0.6.0 is installed for the tests: a Python beside this one that imports it.

(A module of helpers; it holds no tests.) trinity-rft's dependencies pin numpy below 2 (through verl 0.8.0),
so CI installs it in a virtualenv of its own that sees this Python's packages (`.venv-trinity`, made by
.ci/run with the project's `trinity` extra); RFT_TRINITY_PYTHON names another interpreter. Tests that
need the real wheel run that interpreter; tests that need Trinity's files copy them out of its install.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-trinity"
HOW = ("trinity-rft is not installed beside this Python: CI installs it in .venv-trinity (bash .ci/run); "
       "locally: python3 -m venv --system-site-packages .venv-trinity && "
       ".venv-trinity/bin/pip install -e '.[trinity]'")


@functools.cache
def trinity_python() -> str | None:
    """An interpreter that imports the real trinity-rft (and this checkout's rft_runtime), or None."""
    given = os.environ.get("RFT_TRINITY_PYTHON")
    candidate = given or str(VENV / "bin" / "python")
    if not Path(candidate).exists():
        return None
    done = subprocess.run([candidate, "-c", "import trinity, sys; sys.exit(0 if hasattr(trinity, '__version__') "
                                            "and not hasattr(trinity, '__rft_compat__') else 1)"],
                          capture_output=True, text=True, env=_env(), timeout=120)
    return candidate if done.returncode == 0 else None


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRINITY_PLUGIN_DIRS")}
    env["PYTHONPATH"] = f"{ROOT / 'runtime'}{os.pathsep}{ROOT / 'operator'}"
    env.setdefault("TINKER_TELEMETRY", "0")
    env.update(extra)
    return env


def trinity_env(**extra: str) -> dict[str, str]:
    """The environment to run trinity_python() with this checkout's code."""
    return _env(**extra)


@functools.cache
def trinity_package() -> Path | None:
    """The folder of the installed trinity package (its files, as the wheel shipped them), or None."""
    python = trinity_python()
    if python is None:
        return None
    done = subprocess.run([python, "-c", "import os, trinity; print(os.path.dirname(trinity.__file__))"],
                          capture_output=True, text=True, env=_env(), timeout=120)
    return Path(done.stdout.strip()) if done.returncode == 0 else None
