"""The pod scripts of a multi-node Tinker job, run for real: a Ray head and a worker as the pods start them.

The head pod's script and a worker pod's script, exactly as the operator builds them, run with the pods'
environment in a network namespace of their own, where the head Service's name resolves to loopback (what
the cluster's DNS does for the headless Service) and Ray's default /tmp/ray is private, so nothing of
another Ray on this machine is seen or touched. The worker starts first and must wait for the head; the
head starts Ray and execs `rft run`, here a stand-in that joins RAY_ADDRESS as the runtime does and reports
the nodes it sees. The kmock and builder tests check the same pods' shape; this checks that they work.

Needs unprivileged user, network, mount and PID namespaces (`unshare -rnmpf`, as on most Linux hosts and
CI runners without an AppArmor userns restriction) and `ip`; skipped with the reason elsewhere.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rftjob_bodies import rftjob, seed

from rft_operator.builders import build_pods
from rft_operator.jobconfig import prepare_config
from rft_operator.spec import parse_spec

pytest.importorskip("ray", reason="Ray is not installed here (it comes with the runtime extra)")

# what the head execs instead of the runtime: join RAY_ADDRESS, wait for the worker node, say what it saw
STAND_IN = '''#!{python}
import json, os, sys, time
import ray
ray.init()  # RAY_ADDRESS from the pod's environment, as the runtime joins it
deadline = time.monotonic() + 120
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) >= 2 or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps({{"argv": sys.argv[1:], "address": os.environ.get("RAY_ADDRESS"),
                  "nodes": [{{"gpus": n["Resources"].get("GPU", 0), "cpus": n["Resources"].get("CPU", 0)}}
                            for n in alive]}}))
'''


def _namespaces_work() -> str | None:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "needs unshare and ip (util-linux, iproute2)"
    probe = subprocess.run(["unshare", "-rnmpf", "--mount-proc", "sh", "-c", "ip link set lo up"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"unprivileged namespaces are not allowed here ({probe.stderr.strip()[:200]})"
    return None


def _pod_env(pod: dict, home: Path, path: str) -> dict[str, str]:
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"] if "value" in e}
    # POD_IP comes from the downward API in a pod; HOME is the pod's /tmp, fresh in every container: a fresh
    # directory here too, so no Ray token of this machine's user is picked up
    return {**env, "POD_IP": "127.0.0.1", "HOME": str(home), "PATH": path, "LANG": "C.UTF-8"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_head_and_worker_scripts_form_a_ray_cluster_the_runtime_joins_without_gpus(tmp_path):
    reason = _namespaces_work()
    if reason:
        pytest.skip(reason)
    config = seed("tinker.yaml")
    config["cluster"] = {"node_num": 2}
    job = rftjob("mn", config)
    spec = parse_spec(job["spec"])
    cfg = prepare_config(job["spec"]["config"], spec, job_name="mn", namespace="default")
    head, worker = build_pods(job, spec, cfg, attempt=0)

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "rft").write_text(STAND_IN.format(python=sys.executable))
    (bin_dir / "rft").chmod(0o755)
    ray_dir = str(Path(shutil.which("ray") or sys.executable).parent)
    path = f"{bin_dir}:{ray_dir}:/usr/bin:/bin"
    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n127.0.0.1 mn-head\n")
    for name in ("head-home", "worker-home"):
        (tmp_path / name).mkdir()

    def run(pod: dict, home: str, log: str) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in _pod_env(pod, tmp_path / home, path).items())
        return f"env -i {env} sh -c {shlex.quote(pod['spec']['containers'][0]['command'][2])} > {tmp_path / log} 2>&1"

    script = "\n".join([
        "set -e",
        "ip link set lo up",
        f"mount --bind {tmp_path / 'hosts'} /etc/hosts",
        "mount -t tmpfs tmpfs /tmp/ray",
        # the worker first: it retries until the head answers, as a worker pod scheduled before its head does
        run(worker, "worker-home", "worker.log") + " &",
        "sleep 3",
        run(head, "head-home", "head.log"),
    ])
    Path("/tmp/ray").mkdir(exist_ok=True)  # the mount point (Ray's default temp dir); mounted over, not used
    # the PID namespace ends every Ray process with the script, whatever happens to it
    done = subprocess.run(["unshare", "-rnmpf", "--mount-proc", "sh", "-c", script], capture_output=True,
                          text=True, timeout=280)
    logs = {n: (tmp_path / n).read_text() if (tmp_path / n).exists() else "" for n in ("head.log", "worker.log")}
    assert done.returncode == 0, (done.stderr, logs["head.log"][-3000:], logs["worker.log"][-3000:])
    report = json.loads(logs["head.log"].strip().splitlines()[-1])
    assert report["address"] == "127.0.0.1:6379"
    assert report["argv"][:3] == ["run", "--config", "/etc/rft/config.yaml"]
    assert len(report["nodes"]) == 2, report  # the head and the worker that joined it over mn-head:6379
    assert all(n["gpus"] == 0 and n["cpus"] > 0 for n in report["nodes"]), report
