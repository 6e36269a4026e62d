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


# what the pod of a job on a RayCluster execs instead of the runtime: join RAY_ADDRESS and say what it saw
JOINS = '''#!{python}
import json, os, sys, time
import ray
ray.init()  # RAY_ADDRESS from the pod's environment, as the runtime joins it
mine = ray.get_runtime_context().get_node_id()
nodes = [n for n in ray.nodes() if n["Alive"]]
print(json.dumps({{"argv": sys.argv[1:], "address": os.environ.get("RAY_ADDRESS"),
                  "own": [n["Resources"].get("CPU", 0) for n in nodes if n["NodeID"] == mine],
                  "others": [n["Resources"].get("CPU", 0) for n in nodes if n["NodeID"] != mine]}}))
'''


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_pod_of_a_job_on_a_raycluster_joins_its_head_as_a_node_without_cpus(tmp_path):
    """spec.rayClusterRef: the job's one pod joins the RayCluster's head Service as a node with no CPUs, so the
    runtime's runner actors land on the RayCluster's own nodes. The head runs as KubeRay's would, in a
    network namespace of its own (its own address, behind a veth pair, as another pod), so the driver joins
    through its own pod's raylet, as in a cluster (on one address Ray would pick the head's)."""
    reason = _namespaces_work()
    if reason:
        pytest.skip(reason)
    config = seed("tinker.yaml")
    config["cluster"] = {"node_num": 3}
    job = rftjob("onray", config, rayClusterRef={"name": "shared"})
    spec = parse_spec(job["spec"])
    cfg = prepare_config(job["spec"]["config"], spec, job_name="onray", namespace="default")
    (pod,) = build_pods(job, spec, cfg, attempt=0)

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "rft").write_text(JOINS.format(python=sys.executable))
    (bin_dir / "rft").chmod(0o755)
    ray = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    path = f"{bin_dir}:{Path(ray).parent}:/usr/bin:/bin"
    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n10.99.0.1 shared-head-svc\n")
    (tmp_path / "home").mkdir()
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in _pod_env(pod, tmp_path / "home", path).items())
    env = env.replace("POD_IP=127.0.0.1", "POD_IP=10.99.0.2")
    pidfile, ready = tmp_path / "head.pid", tmp_path / "head.ready"
    # the RayCluster's head, as KubeRay starts it (with CPUs of its own for the runners), in its own netns
    head = "\n".join([
        f"echo $$ > {pidfile}",
        "until ip link show vhead >/dev/null 2>&1; do sleep 0.1; done",
        "ip link set lo up && ip addr add 10.99.0.1/24 dev vhead && ip link set vhead up",
        "mount -t tmpfs tmpfs /tmp/ray",
        f"{shlex.quote(ray)} start --head --node-ip-address=10.99.0.1 --port=6379 --num-cpus=2 --num-gpus=0 "
        f"--disable-usage-stats > {tmp_path / 'cluster.log'} 2>&1",
        f"touch {ready}",
        "sleep 600",
    ])
    script = "\n".join([
        "set -e",
        "ip link set lo up",
        f"mount --bind {tmp_path / 'hosts'} /etc/hosts",
        "ip link add vpod type veth peer name vhead",
        "ip addr add 10.99.0.2/24 dev vpod && ip link set vpod up",
        f"unshare -nm sh -c {shlex.quote(head)} &",
        f"until [ -s {pidfile} ]; do sleep 0.1; done",
        f"ip link set vhead netns $(cat {pidfile})",
        f"until [ -e {ready} ]; do sleep 0.2; done",
        "mount -t tmpfs tmpfs /tmp/ray",
        f"env -i {env} sh -c {shlex.quote(pod['spec']['containers'][0]['command'][2])} > {tmp_path / 'pod.log'} 2>&1",
    ])
    Path("/tmp/ray").mkdir(exist_ok=True)
    # the PID namespace ends every process (both Rays, the sleeping head shell) with the script
    done = subprocess.run(["unshare", "-rnmpf", "--mount-proc", "sh", "-c", script], capture_output=True,
                          text=True, timeout=280)
    logs = {n: (tmp_path / n).read_text() if (tmp_path / n).exists() else "" for n in ("pod.log", "cluster.log")}
    assert done.returncode == 0, (done.stderr, logs["pod.log"][-3000:], logs["cluster.log"][-2000:])
    report = json.loads(logs["pod.log"].strip().splitlines()[-1])
    assert report["address"] == "shared-head-svc:6379"
    assert report["argv"][:3] == ["run", "--config", "/etc/rft/config.yaml"]
    # the driver's node is the pod's, with no CPU: the runners can only go to the RayCluster's
    assert report["own"] == [0] and report["others"] == [2.0], report
