"""How the algorithm layer is put together: a new algorithm type is one file that the validator and the loss
plan then know. (That no import cycle runs through config/ and algorithms/, or anywhere else, is
tests/test_import_structure.py's.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

RUNTIME = Path(__file__).resolve().parents[2] / "runtime" / "rft_runtime"


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
