"""Benchmark of the operator at steady state: API requests per second and RSS with N RFTJobs, on kmock.

    python bench/operator_steady_state.py [--jobs 500] [--resync 30] [--window 60] [--baseline-rev REV]

Runs the operator of this tree and, as the peer, the operator of `--baseline-rev` (default: the commit
before the watch caches landed, i.e. the one that listed each job's children every resync), each as its own
`rft-operator` process against a fresh emulated API server (kmock, in this process) holding N Tinker jobs
whose pods the benchmark reports Running. Once every job is Running it counts the operator's requests over
`--window` seconds (kmock's request log; watches excluded, they are long-lived streams) and reads the
operator's RSS from /proc. Also measured: the RSS of each operator with no job at all, which is what the
imports cost; the rest is what N jobs cost. Prints a table and the ratios new / baseline.

Job metrics are disabled (no progress scrapes) so that every request counted is an API request the
reconcile loop itself decides to send.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "operator"))

NS = "default"


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def baseline_tree(rev: str | None, into: Path) -> tuple[Path, str]:
    """The operator and runtime packages of `rev`, extracted from git into `into`."""
    if rev is None:
        added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--",
                                "operator/rft_operator/cache.py"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
        if not added:
            raise SystemExit("cannot find the commit that added the watch caches; pass --baseline-rev")
        rev = added[-1] + "^"
    archive = into / "baseline.tar"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), rev, "operator", "runtime"], cwd=ROOT,
                   check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    short = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.strip()
    return into / "tree", short


def kubeconfig(url: str, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "kmock", "user": {"token": "bench"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}]}))
    return path


class Operator:
    """One `rft-operator` process from a source tree."""

    def __init__(self, tree: Path, config: Path, resync: float, log: Path):
        self.port = free_port()
        env = {**os.environ, "KUBECONFIG": str(config), "PYTHONPATH": f"{tree / 'runtime'}:{tree / 'operator'}",
               "RFT_OPERATOR_RESYNC_SECONDS": str(resync), "RFT_OPERATOR_METRICS_PORT": str(self.port)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from rft_operator.main import main; sys.exit(main())", "-A",
             "--liveness", ""], env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=tree)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2):
                return True
        except OSError:
            return False

    def jobs_in(self, phase: str) -> float:
        """rft_operator_jobs{phase} from the operator's /metrics (0 while it does not answer)."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as resp:
                text = resp.read().decode()
        except OSError:
            return 0
        return next((s.value for f in text_string_to_metric_families(text) for s in f.samples
                     if s.name == "rft_operator_jobs" and s.labels.get("phase") == phase), 0)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            self.log.close()
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


def wait(check, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(2)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def retried(call, *args, attempts: int = 5):
    """A client call, retried: a busy emulated server may not answer within the client's timeout."""
    for attempt in range(attempts):
        try:
            return call(*args)
        except OSError:
            if attempt == attempts - 1:
                raise
            time.sleep(1)
    return None


def operator_requests(server, since: int) -> tuple[int, int]:
    """(reads, writes) the operator sent after request mark `since`, watches left out."""
    reads = writes = 0
    for request in list(server.emulator)[since:]:
        if request.headers.get("User-Agent", "").startswith("Python-urllib") or request.params.get("watch"):
            continue
        if str(request.method).upper().endswith("GET"):
            reads += 1
        else:
            writes += 1
    return reads, writes


def measure(tree: Path, jobs: int, resync: float, window: float, workdir: Path, label: str) -> dict[str, float]:
    """Idle RSS, then N jobs to Running, then requests over the window and RSS."""
    from kmock_harness import ApiServer, Client
    from rftjob_bodies import rftjob

    # a server of its own: kmock keeps serving the watches of a stopped client and then blocks on them
    server = ApiServer().start()
    op = None
    try:
        op = Operator(tree, kubeconfig(server.url, workdir / f"{label}-idle.kubeconfig"), resync,
                      workdir / f"{label}-idle.log")
        wait(op.ready, 120, f"the {label} operator")
        time.sleep(3)
        idle = rss_mb(op.proc.pid)
    finally:
        if op is not None:
            op.stop()
        server.stop()

    server = ApiServer().start()
    client = Client(server.url, timeout=120)  # a loaded machine makes the emulator slow to answer
    config = kubeconfig(server.url, workdir / f"{label}.kubeconfig")
    op = None
    try:
        for i in range(jobs):
            retried(client.create, "rftjobs", NS, rftjob(f"job-{i}", metrics={"enabled": False}))
        op = Operator(tree, config, resync, workdir / f"{label}.log")
        started = time.monotonic()
        wait(op.ready, 120, f"the {label} operator")

        # progress is read from the request log and the operator's /metrics: listing 500 pods from a busy
        # emulator over HTTP takes longer than the operator takes to create them
        wait(lambda: server.pod_creations(NS) >= jobs, 120 + 5 * jobs, f"{jobs} pods")
        to_pods = time.monotonic() - started
        for i in range(jobs):
            retried(client.set_pod_phase, NS, f"job-{i}-head", "Running")
        wait(lambda: op.jobs_in("Running") >= jobs, 120 + 5 * jobs, f"{jobs} jobs Running")
        time.sleep(min(resync, 10))  # the last status writes' own events settle
        mark = server.request_count()
        time.sleep(window)
        reads, writes = operator_requests(server, mark)
        rss = rss_mb(op.proc.pid)
        return {"idle_rss": idle, "rss": rss, "reads": reads / window, "writes": writes / window,
                "to_pods": to_pods}
    finally:
        if op is not None:  # also when a wait failed: an operator left running would load the next run
            op.stop()
        server.stop()


def main() -> int:
    """Measure this tree and the baseline, print both and the ratios."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=500)
    p.add_argument("--resync", type=float, default=30.0, help="--resync-seconds of both operators")
    p.add_argument("--window", type=float, default=60.0, help="seconds of steady state counted")
    p.add_argument("--baseline-rev", default=None, help="git revision of the peer (default: before the caches)")
    p.add_argument("--no-baseline", action="store_true", help="measure this tree only")
    args = p.parse_args()

    import logging

    logging.disable(logging.INFO)  # kmock's access log
    workdir = Path(tempfile.mkdtemp(prefix="rft-bench-operator-"))
    print(f"{args.jobs} RFTJobs (Running), resync {args.resync:.0f}s, steady-state window {args.window:.0f}s, kmock")
    print(f"{'operator':<18} {'reads/s':>8} {'writes/s':>9} {'RSS MB':>7} {'idle RSS':>9} {'per job KB':>11} "
          f"{'to pods s':>10}", flush=True)

    def show(name: str, r: dict[str, float]) -> None:
        per_job = (r["rss"] - r["idle_rss"]) * 1024 / max(args.jobs, 1)
        print(f"{name:<18} {r['reads']:>8.2f} {r['writes']:>9.2f} {r['rss']:>7.1f} {r['idle_rss']:>9.1f} "
              f"{per_job:>11.1f} {r['to_pods']:>10.1f}", flush=True)

    rows = []
    try:
        rows.append(("this tree", measure(ROOT, args.jobs, args.resync, args.window, workdir, "new")))
        show(*rows[-1])
        if not args.no_baseline:
            tree, rev = baseline_tree(args.baseline_rev, workdir)
            rows.append((f"baseline {rev}", measure(tree, args.jobs, args.resync, args.window, workdir, "old")))
            show(*rows[-1])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if len(rows) == 2:
        new, old = rows[0][1], rows[1][1]
        reqs_new, reqs_old = new["reads"] + new["writes"], old["reads"] + old["writes"]
        print(f"requests/s new/baseline: {reqs_new:.2f}/{reqs_old:.2f}"
              + (f" = {reqs_new / reqs_old:.3f}" if reqs_old else ""))
        print(f"RSS new/baseline: {new['rss']:.1f}/{old['rss']:.1f} MB = {new['rss'] / old['rss']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
