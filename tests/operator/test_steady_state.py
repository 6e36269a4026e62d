"""At steady state the operator reads from its watch caches: between resyncs it sends no API request at all."""

from __future__ import annotations

import socket
import time

from kmock_harness import wait_for
from rftjob_bodies import rftjob, seed
from test_operator_kmock import scrape, status

NS = "default"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settled(client, name, phase):
    return wait_for(lambda: status(client, name).get("phase") == phase, 30, f"{name} to be {phase}")


def test_jobs_in_every_phase_cost_no_requests_between_resyncs(api_server, client, running_operator):
    from rft_operator import handlers

    verl = {**seed("verl-lora.yaml"), "cluster": {"node_num": 2, "gpu_per_node": 1}}
    bad = seed("tinker.yaml")
    bad["buffer"]["batch_size"] = -1
    client.create("rftjobs", NS, rftjob("run", metrics={"port": free_port()}, storage={"size": "1Gi"}))
    client.create("rftjobs", NS, rftjob("pend", verl))
    client.create("rftjobs", NS, rftjob("done"))
    client.create("rftjobs", NS, rftjob("bad", bad))
    client.create("rftjobs", NS, rftjob("held", suspend=True))
    for pod in ("run-head", "done-head", "pend-head", "pend-worker-1"):
        wait_for(lambda pod=pod: client.get("pods", NS, pod), 30, pod)
    client.set_pod_phase(NS, "run-head", "Running")
    client.set_pod_phase(NS, "done-head", "Running")
    settled(client, "run", "Running")
    settled(client, "done", "Running")
    client.set_pod_phase(NS, "done-head", "Succeeded", exit_code=0)
    for name, phase in (("done", "Succeeded"), ("pend", "Pending"), ("bad", "Failed"), ("held", "Suspended")):
        settled(client, name, phase)
    time.sleep(3)  # the last writes' own watch events come back and are reconciled

    port = handlers.STATE.metrics_port
    mark, before = api_server.request_count(), scrape(port)[("rft_operator_reconciles_total", ())]
    time.sleep(5)  # five resyncs (RFT_OPERATOR_RESYNC_SECONDS=1) of five jobs
    reconciles = scrape(port)[("rft_operator_reconciles_total", ())] - before
    assert reconciles >= 5 * 2, f"only {reconciles} reconciles: the window did not cover the resyncs"
    assert api_server.operator_requests(mark) == [], "reads or writes at steady state"
