"""Two `rft-operator` replicas with leader election against kmock: one acts, the other takes over when the
leader is killed, and no pod is ever created twice."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from kmock_harness import wait_for
from rftjob_bodies import rftjob
from test_operator_kmock import scrape, status

NS = "default"
LEASE = "/apis/coordination.k8s.io/v1/namespaces/default/leases/rft-operator"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replica:
    """One operator process (as a pod of the chart's Deployment would run it)."""

    def __init__(self, name, kubeconfig, tmp_path):
        self.name, self.port = name, free_port()
        self.log_path = tmp_path / f"{name}.log"
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAME": name,
               "RFT_OPERATOR_RESYNC_SECONDS": "1", "RFT_OPERATOR_LEADER_ELECT": "true",
               "RFT_OPERATOR_LEASE_NAMESPACE": NS, "RFT_OPERATOR_LEASE_SECONDS": "4",
               "RFT_OPERATOR_RENEW_DEADLINE_SECONDS": "3", "RFT_OPERATOR_RETRY_SECONDS": "0.5"}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from rft_operator.main import main; sys.exit(main())",
             "-A", "--metrics-port", str(self.port), "--liveness", ""],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def leader_gauge(self):
        return scrape(self.port).get(("rft_operator_leader", ()))

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
        return self.proc.returncode


def holder(client):
    """The Lease's holder ('' when released or absent)."""
    import urllib.error

    try:
        lease = client.request("GET", LEASE)
    except urllib.error.HTTPError:
        return ""
    return ((lease or {}).get("spec") or {}).get("holderIdentity") or ""


def test_the_standby_takes_over_when_the_leader_is_killed_and_no_pod_is_created_twice(
        api_server, client, kubeconfig, tmp_path):
    client.create("rftjobs", NS, rftjob("e1"))
    client.create("rftjobs", NS, rftjob("e2"))
    a = Replica("replica-a", kubeconfig, tmp_path)
    b = None
    try:
        wait_for(lambda: holder(client).startswith("replica-a_"), 40, "replica a to lead")
        wait_for(lambda: client.get("pods", NS, "e1-head") and client.get("pods", NS, "e2-head"), 30, "pods")
        b = Replica("replica-b", kubeconfig, tmp_path)
        wait_for(lambda: b.leader_gauge() == 0, 40, "replica b to stand by")
        assert a.leader_gauge() == 1
        # while both run, only the leader acts
        client.create("rftjobs", NS, rftjob("e3"))
        wait_for(lambda: client.get("pods", NS, "e3-head"), 30, "e3's pod")
        client.set_pod_phase(NS, "e1-head", "Running")
        wait_for(lambda: status(client, "e1").get("phase") == "Running", 30, "e1 Running")
        time.sleep(2)
        assert holder(client).startswith("replica-a_") and b.leader_gauge() == 0

        a.stop(signal.SIGKILL)  # no clean shutdown: the Lease must expire
        killed = time.monotonic()
        client.create("rftjobs", NS, rftjob("e4"))
        wait_for(lambda: holder(client).startswith("replica-b_"), 30, "replica b to take over")
        took = time.monotonic() - killed
        wait_for(lambda: client.get("pods", NS, "e4-head"), 30, "e4's pod from the new leader")
        client.set_pod_phase(NS, "e2-head", "Running")
        wait_for(lambda: status(client, "e2").get("phase") == "Running", 30, "e2 Running under the new leader")
        assert b.leader_gauge() == 1
        assert took >= 3, f"took over after {took:.1f}s, before the 4 s lease could expire"
        time.sleep(2)
        assert api_server.pod_creations() == 4, "a pod was created twice"
        assert b.stop() == 0, b.log_path.read_text()[-3000:]
        # a clean shutdown hands the Lease over at once instead of letting it run out
        assert holder(client) == ""
    finally:
        a.stop(signal.SIGKILL)
        if b is not None:
            b.stop(signal.SIGKILL)
