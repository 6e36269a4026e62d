"""An import shim so that trinity-rft's workflow modules load without vLLM (CPU machines, Tinker jobs).

trinity-rft 0.6.0 imports vLLM at module level in `trinity/common/models/mm_utils.py` (`ModelConfig`,
`parse_chat_messages`, `MultiModalDataDict`, ...), which `trinity/common/models/model.py` imports, which
most workflow modules import for the `ModelWrapper` type hint. On this runtime sampling goes through
Tinker and `self.model` is the runtime's own wrapper, so those names are never used; but the import alone
fails without vLLM.

The shim is a finder on sys.meta_path that answers only (1) for the vLLM modules Trinity imports, (2) when
vLLM is not installed and (3) when the import comes from a `trinity.` module. Each name it hands out is a
placeholder that raises, saying why, if anything ever calls or instantiates it; once Trinity's module is
imported the shim's modules leave sys.modules again (`forget`), so `import vllm` elsewhere fails as before.
The installed wheel's files are not touched: installing vLLM leaves Trinity exactly as shipped.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

# the vLLM modules trinity-rft 0.6.0 imports at module level (mm_utils.py), and their parents
MODULES = ("vllm", "vllm.config", "vllm.entrypoints", "vllm.entrypoints.chat_utils", "vllm.inputs")
MARKER = "__rft_vllm_stub__"
_SELF = __name__


def _placeholder(module: str, name: str) -> type:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"{module}.{name} was called, but vLLM is not installed: on this runtime workflows sample through "
            "Tinker via self.model, and Trinity's vLLM code paths (its own inference engines, server-side "
            "multimodal parsing) do not run here")

    return type(name, (), {"__new__": lambda cls, *a, **k: refuse(), "__call__": refuse,
                           "__module__": module, "__doc__": "vLLM is not installed (rft_runtime's shim)"})


def _from_trinity() -> bool:
    """True when the import being resolved was started by code of a `trinity.` module."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not name.startswith(("importlib", _SELF)):
            return name == "trinity" or name.startswith("trinity.")
        frame = frame.f_back
    return False


class _Stub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):  # noqa: D102 - the finder protocol
        if name not in MODULES or not _from_trinity():
            return None
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec):  # noqa: D102 - the loader protocol
        return None

    def exec_module(self, module: types.ModuleType) -> None:  # noqa: D102 - the loader protocol
        setattr(module, MARKER, True)
        module.__path__ = []
        cache: dict[str, type] = {}

        def attribute(name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            if name not in cache:
                cache[name] = _placeholder(module.__name__, name)
            return cache[name]

        module.__getattr__ = attribute  # type: ignore[method-assign]


_finder = _Stub()


def vllm_installed() -> bool:
    """Whether a real vLLM is importable (the shim itself does not count)."""
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
        try:
            return importlib.util.find_spec("vllm") is not None
        finally:
            sys.meta_path.append(_finder)
    return importlib.util.find_spec("vllm") is not None


def forget() -> None:
    """Drop the shim's modules from sys.modules once Trinity's modules hold the names they imported, so that
    `import vllm` elsewhere in the process still fails as it should."""
    for name in [n for n, m in sys.modules.items() if getattr(m, MARKER, False)]:
        del sys.modules[name]


def install() -> bool:
    """Put the shim on sys.meta_path unless vLLM is installed; True when it is in place (idempotent)."""
    if _finder in sys.meta_path:
        return True
    if vllm_installed():
        return False
    sys.meta_path.append(_finder)
    return True
