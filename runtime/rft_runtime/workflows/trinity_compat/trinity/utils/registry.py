"""Stand-in for trinity.utils.registry: registering a workflow or reward function here makes its name
known to this runtime's registry (and so to `rft validate` / `rft run`)."""

from typing import Any

from rft_runtime.workflows.trinity_compat import HOOKS

_KINDS = {"workflows": "workflows", "reward_functions": "reward_functions"}


class Registry:
    """Trinity's decorator registry; `workflows` and `reward_functions` feed the runtime's tables."""

    def __init__(self, name: str, default_mapping: dict | None = None):
        self._name = name
        self._modules: dict[str, Any] = {}
        self._default_mapping = dict(default_mapping or {})

    @property
    def name(self) -> str:
        """The registry's name."""
        return self._name

    @property
    def modules(self) -> dict:
        """Registered name -> object."""
        return self._modules

    def get(self, module_key: str) -> Any:
        """The object registered as module_key, else the runtime's own entry of that name or import path."""
        if module_key in self._modules:
            return self._modules[module_key]
        if module_key is None:
            return None
        if self._name in _KINDS:
            return HOOKS["resolve"](_KINDS[self._name], module_key)
        raise KeyError(f"{module_key!r} is not registered in {self._name}")

    def _register_module(self, module_name: str | None = None, module_cls: Any = None, force: bool = False) -> None:
        name = module_name or module_cls.__name__
        if name in self._modules and not force:
            raise KeyError(f"{name} is already registered in {self._name}")
        self._modules[name] = module_cls
        module_cls._name = name
        if self._name in _KINDS:
            HOOKS["register"](_KINDS[self._name], name, module_cls)

    def register_module(self, module_name: str | None = None, module_cls: Any = None, force: bool = False,
                        lazy: bool = False) -> Any:
        """Register module_cls under module_name, or return a decorator that does."""
        if module_cls is not None:
            self._register_module(module_name, module_cls, force)
            return module_cls

        def _register(cls: Any) -> Any:
            self._register_module(module_name, cls, force)
            return cls

        return _register
