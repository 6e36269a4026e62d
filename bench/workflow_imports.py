"""What a workflow's imports cost: this runtime's workflow API against Trinity-RFT 0.6's own package.

    python bench/workflow_imports.py [--wheel PATH] [--repeat 5]

Each figure is the median wall time of a fresh interpreter doing only that import (so the interpreter's own
start-up is measured once, as "python -c pass", and subtracted). Trinity is taken from its wheel, unpacked
without its dependencies: what it then fails to import shows what it would pull in. Prints milliseconds,
the modules each import loads, and the ratio against the runtime's stand-in.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WHEEL = Path("/work/trinity/trinity_rft-0.6.0-py3-none-any.whl")

PROBE = """
import json, sys, time
t = time.perf_counter()
err = None
try:
    exec({stmt!r})
except Exception as exc:
    err = f"{{type(exc).__name__}}: {{exc}}"
dt = time.perf_counter() - t
heavy = sorted(m for m in ("torch", "ray", "transformers", "datasets", "vllm", "tinker", "openai", "numpy")
               if m in sys.modules)
print(json.dumps({{"s": dt, "error": err, "modules": len(sys.modules), "heavy": heavy}}))
"""

CASES = {
    "runtime registry (known_workflows)": (
        "import rft_runtime.workflows as w; w.known_workflows()", "runtime"),
    "runtime: Trinity imports via the stand-in": (
        "from rft_runtime.workflows import trinity_compat; trinity_compat.install(); "
        "from trinity.common.workflows import Workflow, WORKFLOWS; "
        "from trinity.common.workflows.workflow import MultiTurnWorkflow; "
        "from trinity.common.experience import Experience", "runtime"),
    "trinity-rft: trinity.common.experience": ("from trinity.common.experience import Experience", "trinity"),
    "trinity-rft: trinity.common.workflows": ("from trinity.common.workflows import Workflow, WORKFLOWS", "trinity"),
    "trinity-rft: trinity.common.models.model": ("from trinity.common.models.model import ModelWrapper", "trinity"),
}


def run(stmt: str, path: str, repeat: int) -> dict:
    """Median seconds of `stmt` in fresh interpreters (PYTHONPATH=path), with what it imported."""
    env = dict(os.environ, PYTHONPATH=path)
    times, last = [], {}
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", PROBE.format(stmt=stmt)], capture_output=True, text=True,
                             env=env, check=True).stdout
        last = json.loads(out.strip().splitlines()[-1])
        times.append(last["s"])
    last["median_ms"] = statistics.median(times) * 1000
    return last


def main() -> int:
    """Measure every case and print the table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--wheel", default=str(DEFAULT_WHEEL), help="trinity_rft-0.6.0 wheel")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(args.wheel) as wheel:
            wheel.extractall(tmp)
        paths = {"runtime": str(ROOT / "runtime"), "trinity": tmp}
        results = {name: run(stmt, paths[where], args.repeat) for name, (stmt, where) in CASES.items()}
    ours = results["runtime: Trinity imports via the stand-in"]["median_ms"]
    print(f"{'import':46} {'median ms':>10} {'x stand-in':>10} {'modules':>8}  heavy / error")
    for name, res in results.items():
        ratio = res["median_ms"] / ours if ours else float("nan")
        tail = res["error"] or ", ".join(res["heavy"]) or "-"
        if res["error"] and res["heavy"]:
            tail = f"{', '.join(res['heavy'])} loaded, then {res['error']}"
        print(f"{name:46} {res['median_ms']:10.1f} {ratio:10.1f} {res['modules']:8d}  {tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
