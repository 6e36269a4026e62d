"""The operator's own Prometheus metrics, on a registry of its own (never the process-global one)."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rft_operator import status as st


class OperatorMetrics:
    """Jobs by phase, reconcile count / errors / duration, and per-job series removed with the job."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}
        self.jobs = Gauge("rft_operator_jobs", "RFTJobs by phase.", ["phase"], registry=self.registry)
        self.job_phase = Gauge(
            "rft_operator_job_phase", "1 for the phase each RFTJob is in.", ["namespace", "name", "phase"],
            registry=self.registry,
        )
        self.job_duration = Gauge(
            "rft_operator_job_duration_seconds", "Seconds from a job's start to its end (or now).",
            ["namespace", "name"], registry=self.registry,
        )
        self.job_retries = Gauge(
            "rft_operator_job_retries", "Pod failures retried so far.", ["namespace", "name"], registry=self.registry
        )
        self.reconciles = Counter("rft_operator_reconciles_total", "Reconciliations run.", registry=self.registry)
        self.errors = Counter(
            "rft_operator_reconcile_errors_total", "Reconciliations that raised.", registry=self.registry
        )
        self.duration = Histogram(
            "rft_operator_reconcile_duration_seconds", "Time one reconciliation took.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=self.registry,
        )
        self.leader = Gauge(
            "rft_operator_leader", "1 on the replica that reconciles (holds the Lease, or runs alone), else 0.",
            registry=self.registry,
        )
        self.leader.set(1)
        for phase in st.PHASES:
            self.jobs.labels(phase=phase).set(0)

    def observe_job(self, namespace: str, name: str, status: dict[str, Any], now: float) -> None:
        """Record one job's phase, duration and retries after a reconcile."""
        phase = status.get("phase") or st.PENDING
        key = (namespace, name)
        with self._lock:
            before = self._phases.get(key)
            if before != phase:
                if before is not None:
                    self.job_phase.remove(namespace, name, before)
                self._phases[key] = phase
                self.job_phase.labels(namespace=namespace, name=name, phase=phase).set(1)
                self._recount()
            start = st.parse_time(status.get("startTime"))
            end = st.parse_time(status.get("completionTime")) or now
            if start is not None:
                self.job_duration.labels(namespace=namespace, name=name).set(max(0.0, end - start))
            self.job_retries.labels(namespace=namespace, name=name).set(int(status.get("retries") or 0))

    def forget_job(self, namespace: str, name: str) -> None:
        """Drop every series of a deleted job, so dashboards do not show ghosts."""
        key = (namespace, name)
        with self._lock:
            phase = self._phases.pop(key, None)
            if phase is not None:
                self.job_phase.remove(namespace, name, phase)
            for gauge in (self.job_duration, self.job_retries):
                try:
                    gauge.remove(namespace, name)
                except KeyError:
                    pass
            self._recount()

    def set_leader(self, leader: bool) -> None:
        """A standby reports no jobs: summed over replicas, the job series count each job once."""
        self.leader.set(1 if leader else 0)
        if not leader:
            with self._lock:
                keys = list(self._phases)
            for namespace, name in keys:
                self.forget_job(namespace, name)

    def _recount(self) -> None:
        counts = dict.fromkeys(st.PHASES, 0)
        for phase in self._phases.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase, n in counts.items():
            self.jobs.labels(phase=phase).set(n)
