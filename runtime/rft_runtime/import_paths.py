"""What counts as an import path of user code (a workflow class, a reward function): one rule for the
config validator and the workflow registry alike, so a name the validator accepts is one the runtime loads.

Two forms: `package.module:Name` and Trinity-RFT's `package.module.Name` (split at the last dot, as
Trinity's registry does). Every part is a Python identifier and no keyword. This module imports nothing
from the project, so any layer may use it.
"""

from __future__ import annotations

import keyword


def split_import_path(name: str) -> tuple[str, str] | None:
    """(module, attribute) of `package.module:Name` or `package.module.Name`; None when `name` is not an
    import path (a bare name like `math_workflow`, an empty part, a part that is no identifier)."""
    if ":" in name:
        module, _, attr = name.partition(":")
    else:
        module, _, attr = name.rpartition(".")
    parts = module.split(".") if module else []
    ok = parts and all(p.isidentifier() and not keyword.iskeyword(p) for p in parts)
    return (module, attr) if ok and attr.isidentifier() and not keyword.iskeyword(attr) else None


def is_import_path(name: str) -> bool:
    """True for `package.module:Name` and `package.module.Name` (the forms user code takes)."""
    return split_import_path(name) is not None
