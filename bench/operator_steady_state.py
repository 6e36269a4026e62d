"""Benchmark of the operator on a real Kubernetes API server: N RFTJobs to N pods, RSS, steady-state requests.

    python bench/operator_steady_state.py [--jobs 500] [--window 60] [--resync 30] [--baseline-rev REV]
                                          [--profile-memory] [--kubeconfig ADMIN --operator-kubeconfig OP
                                           --audit-log FILE]

By default it starts the control plane of ../shared/k8s (etcd, kube-apiserver and kube-controller-manager,
Kubernetes v1.28.7, built once per machine by its build.sh) in a temporary directory, once per operator
measured, and stops exactly that at the end. The operator runs as its own `rft-operator` process, cluster-wide,
with the identity of `operator.kubeconfig`, whose requests (and only those) the API server writes to its
audit log: that log is what the request counts below are counted from, so they are the operator's own
requests, whatever the control plane does meanwhile. `--kubeconfig`, `--operator-kubeconfig` and
`--audit-log` point it at a cluster you run instead (the audit log must hold the operator identity's
requests only).

What is measured, per operator (this tree, and `--baseline-rev` when given, each on a fresh control plane):
- idle RSS: the operator with no job at all (what its imports cost);
- to pods: the seconds from the first of N `examples/rftjobs/tinker.yaml` jobs created (8 client threads)
  to the N-th pod created, the operator already running;
- the benchmark then plays the kubelet (there are no nodes) and reports every pod Running, waits until
  every job is Running, lets the last writes settle, and counts the operator's requests over `--window`
  seconds (watches left out: they are long-lived streams): reads/s (get, list) and writes/min (create,
  update, patch, delete);
- RSS at steady state, its peak, and "Connection pool is full" warnings in the operator's log.
`--profile-memory` also prints where this tree's operator keeps its memory at steady state (in the same run:
its structures walked and sized, kopf's per-object memories, the allocator's in-use and free-but-kept bytes,
the Python objects by type) and what its imports cost, module by module.
Targets (issue 22): N=500 pods in < 30 s, RSS < 100 MB, 0 reads/s and 0 writes/min at steady state, no pool
warnings. The machine's load (uptime) is printed with each run: timings on a busy machine are not figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SH = ROOT.parent / "shared" / "k8s" / "cluster.sh"
NS = "bench"
GROUP, VERSION, PLURAL = "rft.dev", "v1alpha1", "rftjobs"
OPERATOR_USER = "rft-bars-operator"
READ_VERBS = {"get", "list"}
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
POOL_WARNING = "Connection pool is full"
EXAMPLE = ROOT / "examples" / "rftjobs" / "tinker.yaml"

# Runs the operator as `rft-operator` does; with RFT_BENCH_HEAP set, SIGUSR1 writes where its memory is:
# the sizes of the operator's own structures and kopf's per-object memories (objects walked, nothing traced),
# the allocator's view (glibc mallinfo2: in use vs free-but-kept), and the Python objects by type.
LAUNCHER = r"""
import os, signal, sys
out = os.environ.get("RFT_BENCH_HEAP")
if out:
    def _dump(*_):
        import ctypes, gc, json
        def deep(obj, seen=None):
            seen = set() if seen is None else seen
            if id(obj) in seen:
                return 0
            seen.add(id(obj))
            size = sys.getsizeof(obj)
            if isinstance(obj, dict):
                size += sum(deep(k, seen) + deep(v, seen) for k, v in list(obj.items()))
            elif isinstance(obj, (list, tuple, set, frozenset)):
                size += sum(deep(v, seen) for v in list(obj))
            elif hasattr(obj, "__dict__") and not isinstance(obj, type):
                size += deep(vars(obj), seen)
            elif hasattr(obj, "__slots__"):
                size += sum(deep(getattr(obj, s), seen) for s in obj.__slots__ if hasattr(obj, s))
            return size
        from rft_operator import handlers
        state = handlers.STATE
        garbage = gc.collect()  # what reference cycles held until now
        parts = {
            "job store (compact JSON of every RFTJob)": deep(state.jobs),
            "child indexes (trimmed pods, ConfigMaps, Services, claims)": sum(deep(i) for i in state.indexes.values()),
            "work queue": deep(state.queue),
            "config cache": deep(state.controller.configs) if state.controller else 0,
            "own-write expectations": deep(state.controller._expected) + deep(state.controller.writes)
            if state.controller else 0,
            "operator metrics (per-job series)": deep(state.controller.metrics) if state.controller else 0,
        }
        memories = [o for o in gc.get_objects() if type(o).__name__ == "ResourceMemories"]
        parts["kopf per-object memories"] = sum(deep(m) for m in memories)
        counts = {}
        for o in gc.get_objects():
            name = type(o).__name__
            n, s = counts.get(name, (0, 0))
            counts[name] = (n + 1, s + sys.getsizeof(o))
        malloc = {}
        try:
            class Info(ctypes.Structure):
                _fields_ = [(f, ctypes.c_size_t) for f in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                          "fsmblks", "uordblks", "fordblks", "keepcost")]
            libc = ctypes.CDLL("libc.so.6")
            libc.mallinfo2.restype = Info
            info = libc.mallinfo2()
            malloc = {"in use": info.uordblks + info.hblkhd, "free but kept": info.fordblks,
                      "arenas": info.arena, "mmapped": info.hblkhd}
        except (OSError, AttributeError):
            pass
        top = sorted(counts.items(), key=lambda kv: -kv[1][1])[:12]
        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        try:  # pymalloc's own arenas (Python's small objects): allocated vs used, from _debugmallocstats
            import re, tempfile
            with tempfile.TemporaryFile() as tmp:
                saved = os.dup(2)
                os.dup2(tmp.fileno(), 2)
                try:
                    sys._debugmallocstats()
                finally:
                    os.dup2(saved, 2)
                    os.close(saved)
                tmp.seek(0)
                text = tmp.read().decode("ascii", "replace")
            def grab(label):
                m = re.search(re.escape(label) + r"\s*=\s*([\d,]+)", text)
                return int(m.group(1).replace(",", "")) if m else 0
            malloc["pymalloc arenas"] = grab("# arenas allocated current") * 1024 * 1024  # 1 MiB each (3.10+)
            malloc["pymalloc in use"] = grab("# bytes in allocated blocks")
            unused = re.search(r"([\d,]+) unused pools \* ([\d,]+) bytes", text)
            malloc["pymalloc free in pools"] = grab("# bytes in available blocks") + (
                int(unused.group(1).replace(",", "")) * int(unused.group(2).replace(",", "")) if unused else 0)
        except Exception:
            pass
        try:  # what the allocator could give back: RSS before and after glibc's malloc_trim
            before = rss()
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            malloc["trim gives back"] = before - rss()
        except (OSError, AttributeError):
            pass
        with open(out, "w") as fh:
            json.dump({"parts": parts, "malloc": malloc, "types": top, "cyclic garbage": garbage}, fh)
    signal.signal(signal.SIGUSR1, _dump)
from rft_operator.main import main
sys.exit(main())
"""

# What the operator's imports cost: RSS after each import, in a fresh interpreter.
IMPORTS = r"""
import json, resource, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
out = [("python", rss())]
from rft_operator.main import without_optional_clients  # as rft-operator imports kopf
with without_optional_clients():
    for name in sys.argv[1:]:
        __import__(name)
        out.append((name, rss()))
print(json.dumps(out))
"""
IMPORT_STEPS = ["yaml", "pydantic", "aiohttp", "prometheus_client", "kopf", "rft_runtime.config",
                "rft_operator.handlers"]


def load() -> str:
    """The 1, 5 and 15 minute load averages (the machine is shared; say how busy it was)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A /proc/PID/status memory figure in MB (VmRSS now, VmHWM the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(check, timeout: float, what: str, every: float = 0.5) -> float:
    """Seconds until check() is truthy; exits with a message after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(every)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


class ControlPlane:
    """../shared/k8s's control plane in `workdir`, held by a bash process: closing its stdin stops it (also
    when this process dies), through cluster_down in that shell's EXIT trap."""

    def __init__(self, workdir: Path):
        if not CLUSTER_SH.is_file():
            raise SystemExit(f"{CLUSTER_SH} is missing: the benchmark needs ../shared/k8s beside the repository")
        self.dir = workdir
        script = (f'. "{CLUSTER_SH}"; cluster_up "{workdir}" || exit 1; trap cluster_down EXIT; '
                  'echo "READY $CLUSTER_UP_SECONDS"; read -r _')
        self.proc = subprocess.Popen(["bash", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in self.proc.stdout:
            lines.append(line.rstrip())
            if line.startswith("READY"):
                self.up_seconds = float(line.split()[1] or 0)
                break
        else:
            self.proc.wait()
            raise SystemExit("the control plane did not start: " + " | ".join(lines[-5:]))
        self.admin = workdir / "kubeconfig"
        self.operator = workdir / "operator.kubeconfig"
        self.audit = workdir / "audit.log"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Cluster:
    """Admin access to the API server the operator is measured on."""

    def __init__(self, admin: Path, operator: Path, audit: Path):
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=str(admin), client_configuration=configuration)
        configuration.connection_pool_maxsize = 16
        self.api = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.ext = client.ApiextensionsV1Api(self.api)
        self.operator_kubeconfig = operator
        self.audit = audit

    def install_crds(self, tree: Path) -> None:
        import yaml
        from kubernetes.client.exceptions import ApiException

        names = []
        for path in sorted((tree / "crds").glob("*.yaml")):
            for body in yaml.safe_load_all(path.read_text()):
                if not body:
                    continue
                names.append(body["metadata"]["name"])
                try:
                    self.ext.create_custom_resource_definition(body)
                except ApiException as exc:
                    if exc.status != 409:
                        raise

        def established() -> bool:
            for name in names:
                crd = self.ext.read_custom_resource_definition(name)
                if not any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []):
                    return False
            return True

        wait(established, 60, "the CRDs to be established")

    def fresh_namespace(self) -> None:
        self.core.create_namespace({"metadata": {"name": NS}})

    def audit_mark(self) -> int:
        return self.audit.stat().st_size if self.audit.exists() else 0

    def operator_requests(self, since: int) -> list[dict[str, Any]]:
        """The operator identity's audit records after byte offset `since` (watches left out)."""
        out = []
        with self.audit.open("rb") as fh:
            fh.seek(since)
            for line in fh:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a line being written
                if (event.get("user") or {}).get("username") != OPERATOR_USER or event.get("verb") == "watch":
                    continue
                out.append(event)
        return out


class Operator:
    """One `rft-operator` process from a source tree, cluster-wide, with the operator identity."""

    def __init__(self, tree: Path, kubeconfig: Path, resync: float, log: Path, heap: Path | None = None):
        self.port = free_port()
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": f"{tree / 'runtime'}:{tree / 'operator'}",
               "RFT_OPERATOR_RESYNC_SECONDS": str(resync), "RFT_OPERATOR_METRICS_PORT": str(self.port)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        env.pop("RFT_BENCH_HEAP", None)
        if heap is not None:
            env["RFT_BENCH_HEAP"] = str(heap)
        self.log_path = log
        self.log = log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, "-A", "--liveness", ""], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=tree)

    def metrics(self) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as resp:
                return resp.read().decode()
        except OSError:
            return ""

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise SystemExit(f"the operator exited ({self.proc.returncode}); see {self.log_path}")
        return bool(self.metrics())

    def jobs_in(self, phase: str) -> float:
        """rft_operator_jobs{phase} from the operator's /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        text = self.metrics()
        return next((s.value for f in text_string_to_metric_families(text) for s in f.samples
                     if s.name == "rft_operator_jobs" and s.labels.get("phase") == phase), 0)

    def pool_warnings(self) -> int:
        self.log.flush()
        return self.log_path.read_text(errors="replace").count(POOL_WARNING)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


def job_body(name: str) -> dict[str, Any]:
    import yaml

    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"] = {"name": name, "namespace": NS}
    return body


class PodCounter:
    """Counts the pods created in the namespace from a watch (no polling of N pods)."""

    def __init__(self, cluster: Cluster, target: int):
        self.cluster, self.target = cluster, target
        self.names: set[str] = set()
        self.done_at: float | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from kubernetes import watch

        version = self.cluster.core.list_namespaced_pod(NS, limit=1).metadata.resource_version
        while not self._stop.is_set() and self.done_at is None:
            stream = watch.Watch()
            try:
                for event in stream.stream(self.cluster.core.list_namespaced_pod, NS, resource_version=version,
                                           timeout_seconds=30, allow_watch_bookmarks=False):
                    obj = event["object"]
                    version = obj.metadata.resource_version
                    if event["type"] == "ADDED":
                        self.names.add(obj.metadata.name)
                        if len(self.names) >= self.target and self.done_at is None:
                            self.done_at = time.monotonic()
                            break
                    if self._stop.is_set():
                        break
            except Exception:  # a dropped watch: start again from the last version seen
                time.sleep(0.5)
            finally:
                stream.stop()

    def stop(self) -> None:
        self._stop.set()


def in_threads(fn, items, threads: int = 8) -> None:
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(fn, items):
            pass


def set_running(cluster: Cluster, names: list[str]) -> None:
    """Play the kubelet: every pod Running and Ready (no pod IP: nothing for the operator to scrape)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": now}],
        "containerStatuses": [{"name": "rft", "ready": True, "restartCount": 0, "image": "x", "imageID": "",
                               "state": {"running": {"startedAt": now}}}]}}
    in_threads(lambda n: cluster.core.patch_namespaced_pod_status(n, NS, status), names)


def quiet_for(cluster: Cluster, seconds: float, timeout: float) -> None:
    """Wait until the operator has written nothing for `seconds` (its last status writes settled)."""
    def quiet() -> bool:
        mark = cluster.audit_mark()
        time.sleep(seconds)
        return not [e for e in cluster.operator_requests(mark) if e.get("verb") in WRITE_VERBS]

    wait(quiet, timeout, "the operator's writes to settle", every=0)


def measure(tree: Path, args: argparse.Namespace, workdir: Path, label: str, heap: Path | None = None,
            ) -> dict[str, Any]:
    """One operator from `tree` on a fresh control plane: idle RSS, N jobs to N pods, steady state."""
    plane = None
    if args.kubeconfig:
        cluster = Cluster(Path(args.kubeconfig), Path(args.operator_kubeconfig), Path(args.audit_log))
    else:
        plane = ControlPlane(workdir / f"cluster-{label}")
        cluster = Cluster(plane.admin, plane.operator, plane.audit)
    op = None
    counter = None
    out: dict[str, Any] = {"load_start": load()}
    try:
        cluster.install_crds(tree)
        cluster.fresh_namespace()
        op = Operator(tree, cluster.operator_kubeconfig, args.resync, workdir / f"{label}.log", heap)
        wait(op.ready, 120, f"the {label} operator")
        time.sleep(3)
        out["idle_rss"] = rss_mb(op.proc.pid)

        names = [f"job-{i}" for i in range(args.jobs)]
        counter = PodCounter(cluster, args.jobs)
        started = time.monotonic()
        in_threads(lambda n: cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL,
                                                                            job_body(n)), names)
        out["created"] = time.monotonic() - started
        wait(lambda: counter.done_at is not None, 120 + args.jobs, f"{args.jobs} pods", every=0.2)
        out["to_pods"] = counter.done_at - started
        out["load_pods"] = load()
        out["rss_pods"] = rss_mb(op.proc.pid)

        set_running(cluster, [f"{n}-head" for n in names])
        wait(lambda: op.jobs_in("Running") >= args.jobs, 120 + args.jobs, f"{args.jobs} jobs Running", every=2)
        out["rss_running"] = rss_mb(op.proc.pid)
        quiet_for(cluster, 5, 120 + args.jobs)
        mark = cluster.audit_mark()
        time.sleep(args.window)
        requests = cluster.operator_requests(mark)
        out["rss"] = rss_mb(op.proc.pid)
        out["peak_rss"] = rss_mb(op.proc.pid, "VmHWM")
        reads = [e for e in requests if e.get("verb") in READ_VERBS]
        writes = [e for e in requests if e.get("verb") in WRITE_VERBS]
        out["reads"] = len(reads) / args.window
        out["writes"] = len(writes) * 60 / args.window
        out["requests"] = sorted({f"{e['verb']} {e.get('objectRef', {}).get('resource')}" for e in requests})
        out["pool_warnings"] = op.pool_warnings()
        running = [j for j in cluster.custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]
                   if (j.get("status") or {}).get("phase") == "Running"]
        out["running"] = len(running)
        out["finalizers"] = sum(bool(j["metadata"].get("finalizers")) for j in running)
        if heap is not None:
            os.kill(op.proc.pid, signal.SIGUSR1)
            wait(lambda: heap.exists() and heap.stat().st_size > 0, 120, "the heap summary")
            wait(lambda: _complete_json(heap), 30, "the heap summary to be written")
            out["heap"] = json.loads(heap.read_text())
        out["load_end"] = load()
        return out
    finally:
        if counter is not None:
            counter.stop()
        if op is not None:  # also when a wait failed: an operator left running would load the next run
            op.stop()
        if plane is not None:
            plane.stop()


def _complete_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except ValueError:
        return False


def baseline_tree(rev: str, into: Path) -> tuple[Path, str]:
    """The operator, runtime and CRDs of `rev`, extracted from git into `into`."""
    archive = into / "baseline.tar"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), rev, "operator", "runtime", "crds"],
                   cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    short = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.strip()
    return into / "tree", short


def import_costs(tree: Path) -> list[tuple[str, float]]:
    env = {**os.environ, "PYTHONPATH": f"{tree / 'runtime'}:{tree / 'operator'}"}
    out = subprocess.run([sys.executable, "-c", IMPORTS, *IMPORT_STEPS], env=env, capture_output=True, text=True,
                         check=True).stdout
    return [tuple(x) for x in json.loads(out)]


def main() -> int:
    """Measure this tree (and the baseline), print the figures, the targets and the ratios."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=500)
    p.add_argument("--resync", type=float, default=30.0, help="--resync-seconds of the operators")
    p.add_argument("--window", type=float, default=60.0, help="seconds of steady state counted")
    p.add_argument("--baseline-rev", default=None, help="git revision of a peer measured the same way")
    p.add_argument("--profile-memory", action="store_true", help="also: where the heap goes, what imports cost")
    p.add_argument("--kubeconfig", help="an admin kubeconfig of a cluster you run (instead of ../shared/k8s)")
    p.add_argument("--operator-kubeconfig", help="with --kubeconfig: the identity the operator runs as")
    p.add_argument("--audit-log", help="with --kubeconfig: the API server's audit log of that identity only")
    args = p.parse_args()
    if args.kubeconfig and not (args.operator_kubeconfig and args.audit_log):
        p.error("--kubeconfig needs --operator-kubeconfig and --audit-log")
    if args.kubeconfig and args.baseline_rev:
        p.error("a cluster of your own is measured once: leave out --baseline-rev")

    workdir = Path(tempfile.mkdtemp(prefix="rft-bench-operator-"))
    print(f"{args.jobs} RFTJobs ({EXAMPLE.relative_to(ROOT)}), resync {args.resync:.0f}s, steady-state window "
          f"{args.window:.0f}s, {'your cluster' if args.kubeconfig else 'the ../shared/k8s control plane'}; "
          f"{os.cpu_count()} CPUs", flush=True)
    header = (f"{'operator':<16} {'to pods s':>9} {'create s':>8} {'RSS MB':>7} {'peak':>6} {'idle':>6} "
              f"{'KB/job':>7} {'reads/s':>8} {'writes/min':>10} {'pool warn':>9} {'finalizers':>10}  load")

    def show(name: str, r: dict[str, Any]) -> None:
        per_job = (r["rss"] - r["idle_rss"]) * 1024 / max(args.jobs, 1)
        print(f"{name:<16} {r['to_pods']:>9.1f} {r['created']:>8.1f} {r['rss']:>7.1f} {r['peak_rss']:>6.1f} "
              f"{r['idle_rss']:>6.1f} {per_job:>7.1f} {r['reads']:>8.2f} {r['writes']:>10.2f} "
              f"{r['pool_warnings']:>9} {r['finalizers']:>10}  {r['load_start']} / {r['load_pods']} / "
              f"{r['load_end']}", flush=True)
        print(f"{'':<16} RSS {r['idle_rss']:.1f} MB idle, {r['rss_pods']:.1f} MB once the pods were created, "
              f"{r['rss_running']:.1f} MB once every job ran, {r['rss']:.1f} MB at steady state")
        if r["requests"]:
            print(f"{'':<16} requests at steady state: {', '.join(r['requests'])}")

    rows: list[tuple[str, dict[str, Any]]] = []
    try:
        heap = workdir / "heap.json" if args.profile_memory else None
        rows.append(("this tree", measure(ROOT, args, workdir, "new", heap=heap)))
        print(header)
        show(*rows[-1])
        if args.baseline_rev:
            tree, rev = baseline_tree(args.baseline_rev, workdir)
            rows.append((f"baseline {rev}", measure(tree, args, workdir, "old")))
            show(*rows[-1])
        new = rows[0][1]
        verdicts = [("pods", new["to_pods"] < 30, f"{args.jobs} pods in {new['to_pods']:.1f}s (< 30s)"),
                    ("rss", new["rss"] < 100, f"RSS {new['rss']:.1f} MB (< 100 MB)"),
                    ("reads", new["reads"] == 0, f"{new['reads']:.2f} reads/s (0)"),
                    ("writes", new["writes"] == 0, f"{new['writes']:.2f} writes/min (0)"),
                    ("pool", new["pool_warnings"] == 0, f"{new['pool_warnings']} pool warnings (0)")]
        print("targets: " + "; ".join(f"{text} {'ok' if good else 'MISSED'}" for _, good, text in verdicts))
        if len(rows) == 2:
            old = rows[1][1]
            print(f"new/baseline: to pods {new['to_pods'] / old['to_pods']:.2f}, RSS {new['rss'] / old['rss']:.2f}, "
                  f"idle RSS {new['idle_rss'] / old['idle_rss']:.2f}")
        if args.profile_memory:
            print("\nwhere the memory goes (this tree):")
            costs = import_costs(ROOT)
            print(f"  bare interpreter: {costs[0][1]:.1f} MB; imports, as rft-operator makes them:")
            for (name, rss), (_, before) in zip(costs[1:], costs[:-1], strict=True):
                print(f"    {name:<24} +{rss - before:6.1f} MB  (RSS {rss:.1f} MB)")
            summary = new["heap"]
            print(f"  at steady state with {args.jobs} jobs (RSS {new['rss']:.1f} MB):")
            for part, size in summary["parts"].items():
                print(f"    {size / 2**20:7.2f} MB  {size / max(args.jobs, 1) / 1024:6.1f} KB/job  {part}")
            if summary["malloc"]:
                m = summary["malloc"]
                print(f"    allocator (main arena): {m['in use'] / 2**20:.1f} MB in use, {m['free but kept'] / 2**20:.1f} MB "
                      f"freed but kept ({m['arenas'] / 2**20:.1f} MB in arenas, {m['mmapped'] / 2**20:.1f} MB mmapped); "
                      f"malloc_trim(0) would give back {m.get('trim gives back', 0) / 2**20:.1f} MB of RSS")
                print(f"    pymalloc (Python's small objects): {m.get('pymalloc arenas', 0) / 2**20:.1f} MB of arenas, "
                      f"{m.get('pymalloc in use', 0) / 2**20:.1f} MB in objects, {m.get('pymalloc free in pools', 0) / 2**20:.1f} "
                      "MB free inside them")
            print(f"    objects in reference cycles collected at the dump: {summary.get('cyclic garbage', 0)}")
            print("    Python objects by type (count, shallow MB): " + ", ".join(
                f"{name} {n} {size / 2**20:.1f}" for name, (n, size) in summary["types"]))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
