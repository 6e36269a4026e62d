"""How the two packages are put together: no import cycle anywhere in rft_runtime or rft_operator, no arrow
running up the layers, every module importable first, and `rft validate` and the operator's validation free of
the heavy libraries.

The import graph is read from the source (ast), not from a running interpreter, so it holds every import a
module can make, whichever code path runs. An import inside a function counts as an arrow like one at the top
of the module: deferring an import changes when the two modules meet, not whether one needs the other, so a
cycle closed from inside a function is still a cycle (one call away from a half-initialised module). So do
imports under `if TYPE_CHECKING:` (there are none). Imports stay inside functions to defer a heavy library off
a path that needs the speed, each with a comment that says so. The package __init__ that the interpreter runs
before a module is not an arrow (see _graph); a cycle through one shows when a module is imported first
(test_every_module_can_be_imported_first), and the one function-level import that avoids such a cycle says so
(config/loader.py's checks).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"rft_runtime": ROOT / "runtime" / "rft_runtime", "rft_operator": ROOT / "operator" / "rft_operator"}
# workflows/trinity_compat/trinity is the stand-in for trinity-rft: workflow code imports it as `trinity`
STAND_IN = PACKAGES["rft_runtime"] / "workflows" / "trinity_compat" / "trinity"

# Cycles allowed for now, each a set of modules (none: every cycle fails the test; one listed here and gone
# fails it too, so the list cannot go stale).
KNOWN_CYCLES: set[frozenset[str]] = set()


def _module_files() -> dict[str, Path]:
    """Every module of the two packages (and of the stand-in `trinity`) by its import name."""
    modules: dict[str, Path] = {}
    for name, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            if STAND_IN in path.parents:
                parts = ("trinity", *path.relative_to(STAND_IN).with_suffix("").parts)
            else:
                parts = (name, *path.relative_to(folder).with_suffix("").parts)
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _module_files()


def _imported_names(module: str, path: Path) -> list[str]:
    """Every dotted name the module imports, anywhere in it (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from pkg import sub` imports the module pkg.sub when there is one, else a name of pkg
            names += [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    return names


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> the project modules it imports, module -> the third-party top-level packages it imports).

    An import names the module it names: `from rft_runtime.config.paths import X` is an arrow to config.paths,
    `from rft_runtime.config import X` one to the config package's __init__. The package __init__ that the
    interpreter runs first (config/__init__ before config.paths) is not an arrow: a module that names only
    leaf modules of a package does not use the names its __init__ gathers for outside callers. Counting it
    would tie algorithms/ (which reads config.paths and config.errors) to everything config/__init__
    re-exports, the loader included, which imports algorithms/ back.
    """
    inside: dict[str, set[str]] = {m: set() for m in MODULES}
    outside: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for name in _imported_names(module, path):
            target = name
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if not target:
                if name.split(".")[0] not in PACKAGES:
                    outside[module].add(name.split(".")[0])
            # a module's own packages are begun before it whatever it imports: not an arrow
            elif target != module and not module.startswith(f"{target}."):
                inside[module].add(target)
    return inside, outside


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected groups of more than one module (each an import cycle), by Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(root: str) -> None:
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def _arrows(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    return sorted(f"{a} -> {b}" for a in group for b in graph[a] if b in group)


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert sorted(map(sorted, _cycles(graph))) == [["a", "b", "c"], ["d", "e"]]


def test_the_graph_sees_imports_inside_functions_and_the_packages_they_run():
    inside, outside = _graph()
    # loop/explorer.py imports workflows.ray_runners inside a function (it defers ray)
    assert "rft_runtime.workflows.ray_runners" in inside["rft_runtime.loop.explorer"]
    assert "ray" in outside["rft_runtime.workflows.ray_runners"]
    # the stand-in trinity's modules are imported as `trinity`
    assert "rft_runtime.workflows.protocol" in inside["trinity.common.workflows"]


def test_no_import_cycle_in_the_runtime_or_the_operator():
    inside, _ = _graph()
    found = {frozenset(g) for g in _cycles(inside)}
    new = [_arrows(inside, set(g)) for g in found - KNOWN_CYCLES]
    assert not new, f"import cycles: {new}"
    gone = [sorted(g) for g in KNOWN_CYCLES - found]
    assert not gone, f"these cycles are gone: take them out of KNOWN_CYCLES: {gone}"


def test_no_arrow_runs_up_the_layers():
    inside, outside = _graph()
    up = []
    for module, targets in inside.items():
        for target in targets:
            # the runtime never needs the operator (the operator imports the runtime's config models)
            if module.startswith("rft_runtime") and target.startswith("rft_operator"):
                up.append(f"{module} -> {target}")
            # the loop drives config, data, workflows, algorithms, buffers, backends and the monitor; none of
            # them reaches back into it (only the CLI and the quickstart start it)
            if target.startswith("rft_runtime.loop") and not module.startswith(
                    ("rft_runtime.loop", "rft_runtime.cli", "rft_runtime.quickstart")):
                up.append(f"{module} -> {target}")
            # the operator validates with the runtime's config models (one schema, three uses) and uses no
            # other part of the runtime
            if module.startswith("rft_operator") and target.startswith("rft_runtime") and not (
                    target == "rft_runtime" or target.startswith("rft_runtime.config")):
                up.append(f"{module} -> {target}")
    assert not up, up
    # the operator's pure core (its decisions: reconcile, builders, status) and all it imports run without kopf
    core, todo = set(), ["rft_operator.reconcile", "rft_operator.builders", "rft_operator.status"]
    while todo:
        module = todo.pop()
        if module not in core:
            core.add(module)
            todo += inside[module]
    assert {m for m in core if "kopf" in outside[m]} == set()
    assert "kopf" in outside["rft_operator.handlers"]  # the check sees kopf where it is


_FIRST = """
import importlib, json, sys
bad = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("rft_runtime", "rft_operator")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("rft_runtime", "rft_operator"):
            bad[name] = f"{type(exc).__name__}: {exc}"
        # else an optional library this machine lacks: nothing to learn about the order
    except ImportError as exc:
        bad[name] = f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: S110 - a second registration of something global (a metric): not the order
        pass
print(json.dumps(bad))
"""


def test_every_module_can_be_imported_first():
    # the graph leaves out the package __init__ that importing a.b.c runs first; a cycle through one shows
    # only when the interpreter meets it: a module imported before the others stops half-way ("partially
    # initialized module"). Each module is imported first, the project's modules forgotten between tries.
    names = sorted(m for m in MODULES if not m.startswith("trinity"))
    res = subprocess.run([sys.executable, "-c", _FIRST, json.dumps(names)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.splitlines()[-1]) == {}


# numpy too: it was a third of `rft validate`'s imports, for a list of selector names
HEAVY = ("torch", "transformers", "tinker", "datasets", "ray", "matplotlib", "numpy")


def _imported_by(code: str) -> dict:
    report = f"\nimport json, sys; print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    res = subprocess.run([sys.executable, "-c", code + report], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


@pytest.mark.parametrize("config", ["tinker.yaml", "local-engine.yaml", "verl-lora.yaml"])
def test_rft_validate_imports_no_heavy_library(config, monkeypatch):
    # the validator runs where none of them is installed (the operator's pod has no torch); a Ray placement
    # is reported without importing ray
    monkeypatch.setenv("RFT_RAY", "1")
    code = ("import contextlib, io, sys\nfrom rft_runtime.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            f"    rc = main(['validate', '-c', {str(ROOT / 'examples' / config)!r}])\n"
            "assert rc == 0 and ('Ray actors' in out.getvalue() or 'verl' in out.getvalue()), (rc, out.getvalue())")
    assert _imported_by(code) == []


def test_the_operators_validation_imports_no_heavy_library():
    code = ("import yaml\nfrom rft_operator.jobconfig import prepare_config\nfrom rft_operator.spec import parse_spec\n"
            f"spec = {{'config': yaml.safe_load(open({str(ROOT / 'examples' / 'tinker.yaml')!r}))}}\n"
            "result = prepare_config(spec['config'], parse_spec(spec), job_name='j', namespace='d')\n"
            "assert result.valid, result.issues")
    assert _imported_by(code) == []


def test_the_validator_accepts_the_selectors_the_runtime_runs():
    # the validator reads Trinity's selector names from the facts rather than import the selectors (numpy)
    from rft_runtime.config.data_checks import SELECTORS
    from rft_runtime.data import selectors

    assert SELECTORS == selectors.SELECTORS
