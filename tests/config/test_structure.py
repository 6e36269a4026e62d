"""How the config and algorithm layers are put together: no import cycle among their modules, and a new
algorithm type is one file that the validator and the loss plan then know."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

RUNTIME = Path(__file__).resolve().parents[2] / "runtime" / "rft_runtime"


def _imports(package: str) -> dict[str, set[str]]:
    """Module -> the rft_runtime modules it imports (at the top or inside a function), for every module."""
    modules: dict[str, Path] = {}
    for path in RUNTIME.rglob("*.py"):
        parts = path.relative_to(RUNTIME.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if not name.startswith(package):
            continue
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                # a module's own package is imported before it whatever it says: not an arrow
                if target and target != name and not name.startswith(f"{target}."):
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (each an import cycle), by depth-first search."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(node: str, edges: dict[str, set[str]], out: list[str]) -> None:
        stack = [(node, iter(sorted(edges.get(node, ()))))]
        seen.add(node)
        while stack:
            current, it = stack[-1]
            nxt = next((n for n in it if n not in seen), None)
            if nxt is None:
                stack.pop()
                out.append(current)
            else:
                seen.add(nxt)
                stack.append((nxt, iter(sorted(edges.get(nxt, ())))))

    nodes = set(graph) | {t for targets in graph.values() for t in targets}
    for node in sorted(nodes):
        if node not in seen:
            visit(node, graph, order)
    reverse: dict[str, set[str]] = {n: set() for n in nodes}
    for source, targets in graph.items():
        for target in targets:
            reverse[target].add(source)
    seen.clear()
    groups = []
    for node in reversed(order):
        if node not in seen:
            group: list[str] = []
            visit(node, reverse, group)
            if len(group) > 1:
                groups.append(sorted(group))
    return groups


def test_the_config_and_algorithm_layers_have_no_import_cycle():
    graph = _imports("rft_runtime.config")
    graph.update(_imports("rft_runtime.algorithms"))
    # only arrows within the two layers and between them count here (the rest of the tree has its own)
    inside = {m: {t for t in ts if t.startswith(("rft_runtime.config", "rft_runtime.algorithms"))}
              for m, ts in graph.items()}
    assert _cycles(inside) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_a_new_algorithm_is_one_file(tmp_path):
    # a copy of the package with one file added to rft_runtime/algorithms/types, and nothing else changed
    tree = tmp_path / "src"
    shutil.copytree(RUNTIME, tree / "rft_runtime", ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "rft_runtime" / "algorithms" / "types" / "grpo_plus.py").write_text(textwrap.dedent('''
        from rft_runtime.algorithms.base import Algorithm, register


        @register
        class GRPOPlus(Algorithm):
            """rloo's baseline with sapo's soft gate."""

            name = "grpo_plus"
            advantage_fn = "rloo"
            policy_loss_fn = "sapo"
        '''))
    raw = yaml.safe_load((RUNTIME.parents[1] / "examples" / "tinker.yaml").read_text())
    raw["checkpoint_root_dir"] = str(tmp_path / "ckpt")
    raw["algorithm"]["algorithm_type"] = "grpo_plus"
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(raw))
    code = ("import rft_runtime, sys; from rft_runtime.algorithms import loss_plan; "
            "from rft_runtime.config import load_config; "
            f"plan = loss_plan(load_config({str(config)!r})); print(rft_runtime.__file__, plan.advantage_fn, plan.policy_loss)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(tree)})
    assert res.returncode == 0, res.stderr
    where, advantage, loss = res.stdout.split()
    assert where.startswith(str(tree)) and (advantage, loss) == ("rloo", "sapo")
