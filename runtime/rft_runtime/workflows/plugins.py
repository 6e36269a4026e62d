"""`--plugin-dir`: folders of user workflows and reward functions, loaded as Trinity-RFT loads its plugins.

Each folder goes on sys.path (so `module.Class` / `module:Class` resolve from it) and every `*.py` in it is
imported once, so that `@WORKFLOWS.register_module("name")` / `@REWARD_FUNCTIONS.register_module(...)`
decorators register their names before the config is checked. The folders in TRINITY_PLUGIN_DIRS (Trinity's
variable, os.pathsep-separated) are loaded too. Unlike Trinity, a plugin that fails to import stops the
command with the file and the error: a job must not run without the workflow it names.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from rft_runtime.workflows import trinity_compat
from rft_runtime.workflows.base import WorkflowError

ENV_VAR = "TRINITY_PLUGIN_DIRS"
# (folder, module names) of every plugin folder loaded in this process: Ray runners on other nodes get the
# same files and import the same modules (rft_runtime.workflows.ray_runners)
LOADED: list[tuple[Path, list[str]]] = []


def plugin_dirs(given: list[str] | None) -> list[Path]:
    """The --plugin-dir folders, then TRINITY_PLUGIN_DIRS's, without repeats."""
    out: list[Path] = []
    extra = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    for raw in [*(given or []), *extra]:
        path = Path(raw).expanduser().resolve()
        if path not in out:
            out.append(path)
    return out


def load_plugins(given: list[str] | None) -> list[str]:
    """Import every plugin module; returns their module names. Raises WorkflowError naming the bad one."""
    dirs = plugin_dirs(given)
    if not dirs:
        return []
    trinity_compat.install()
    loaded: list[str] = []
    for folder in dirs:
        if not folder.is_dir():
            raise WorkflowError(f"--plugin-dir {folder}: {'is not a folder' if folder.exists() else 'does not exist'}")
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
        importlib.invalidate_caches()
        for file in sorted(folder.glob("*.py")):
            if file.name.startswith("__"):
                continue
            name = file.stem
            try:
                importlib.import_module(name)
            except Exception as exc:
                raise WorkflowError(f"plugin {file} failed to import: {type(exc).__name__}: {exc}") from exc
            loaded.append(name)
        if folder not in [f for f, _ in LOADED]:
            LOADED.append((folder, [f.stem for f in sorted(folder.glob("*.py")) if not f.name.startswith("__")]))
    return loaded
