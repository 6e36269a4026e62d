"""Prometheus metrics of one running job, on a registry of its own, served over HTTP.

Every series carries one label, `rft_job` (the RFTJob name in a pod, the config's `name` elsewhere): it has
a single value per process, so it adds no cardinality, and it lets one dashboard select a job without
joining on pod names. It is not called `job` because Prometheus sets that label on every target itself.
No series is labelled by step, run id or anything else that grows.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from rft_runtime.monitor.records import as_float

log = logging.getLogger(__name__)

PREFIX = "rft_"
JOB_LABEL = "rft_job"
PHASES = ("sampling", "training", "sync")
# Steps take from under a second (the tiny local engine) to many minutes (a large model on Tinker).
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)


@dataclass(frozen=True)
class GaugeSpec:
    """A record key (Trinity's metric name; the first of several present) exported as a gauge of the last
    step's value."""

    key: str | tuple[str, ...]
    name: str
    doc: str

    @property
    def keys(self) -> tuple[str, ...]:
        """The record keys this gauge reads, in order of preference."""
        return (self.key,) if isinstance(self.key, str) else self.key


@dataclass(frozen=True)
class CounterSpec:
    """A record key (a count for one step) accumulated into a `_total` counter."""

    key: str
    name: str  # without the `_total` the client library appends
    doc: str


GAUGES = (
    GaugeSpec("step", "rft_train_step", "Train step of the last logged step (1-based, counted across stages)."),
    GaugeSpec("total_steps", "rft_total_steps", "Train steps the whole job will run."),
    GaugeSpec("explore_step", "rft_explore_step", "Explore step whose rollouts the last train step used."),
    GaugeSpec("critic/rewards/mean", "rft_reward_mean", "Mean reward over the last step's rollouts."),
    GaugeSpec("critic/rewards/std", "rft_reward_std", "Standard deviation of the last step's rewards."),
    GaugeSpec("critic/rewards/min", "rft_reward_min", "Lowest reward of the last step."),
    GaugeSpec("critic/rewards/max", "rft_reward_max", "Highest reward of the last step."),
    GaugeSpec("rollout/accuracy/mean", "rft_accuracy", "Mean accuracy the workflow reported for the last step (0..1)."),
    GaugeSpec("rollout/format_score/mean", "rft_format_score", "Mean format score the workflow reported for the last step."),
    GaugeSpec(("actor/pg_loss", "actor/sft_loss"), "rft_policy_loss",
              "Policy loss of the last train step (cross-entropy for sft)."),
    GaugeSpec("actor/pg_clipfrac", "rft_pg_clipfrac", "Share of response tokens whose ratio was clipped."),
    GaugeSpec("actor/ppo_kl", "rft_ppo_kl", "Approximate KL between the sampler's and the trained policy."),
    GaugeSpec("actor/kl_loss", "rft_kl", "KL estimate to the reference model in the last train step."),
    GaugeSpec("actor/entropy", "rft_entropy", "Entropy estimate (mean negative log-probability per response token)."),
    GaugeSpec("critic/advantages/mean", "rft_advantage_mean", "Mean advantage of the last step's rollouts."),
    GaugeSpec("critic/advantages/min", "rft_advantage_min", "Lowest advantage of the last step."),
    GaugeSpec("critic/advantages/max", "rft_advantage_max", "Highest advantage of the last step."),
    GaugeSpec("grad_norm", "rft_grad_norm", "Gradient norm of the last optimizer step (before clipping)."),
    GaugeSpec("response_length/mean", "rft_response_length_mean_tokens", "Mean response length, in tokens."),
    GaugeSpec("weight_version_lag", "rft_weight_version_lag",
              "Train steps between the weights that sampled the last batch and the weights it trained."),
    GaugeSpec("learning_rate", "rft_learning_rate", "Learning rate of the last train step."),
    GaugeSpec("time/step", "rft_last_step_duration_seconds", "Wall time of the last step."),
)

COUNTERS = (
    CounterSpec("rollouts", "rft_rollouts", "Rollouts sampled."),
    CounterSpec("failed_rollouts", "rft_failed_rollouts", "Rollouts whose workflow or reward raised, scored as failed."),
    CounterSpec("prompt_tokens", "rft_prompt_tokens", "Prompt tokens sent for sampling or training."),
    CounterSpec("response_tokens", "rft_response_tokens", "Response tokens sampled or trained on."),
    CounterSpec("truncated_prompts", "rft_truncated_prompts", "Prompts longer than max_prompt_tokens."),
)

PHASE_KEYS = {"sampling": "time/sampling", "training": "time/update_actor", "sync": "time/sync"}


class _StepConsistentRegistry(CollectorRegistry):
    """A registry whose collection waits for a step update in progress to finish.

    Without it a scrape landing mid-update could pair the new step number with the previous step's reward.
    """

    def __init__(self, lock: threading.Lock):
        super().__init__()
        self._step_lock = lock

    def collect(self):  # noqa: ANN201 - same signature as the base class
        with self._step_lock:
            families = list(super().collect())
        yield from families


class Exporter:
    """The gauges, counters and histograms of one job, fed from the same dict as metrics.jsonl."""

    def __init__(self, job_name: str):
        self.job_name = job_name
        self._lock = threading.Lock()
        self.registry = _StepConsistentRegistry(self._lock)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None
        self.host: str | None = None
        labels = [JOB_LABEL]
        reg = self.registry
        self.gauges = {s.keys: Gauge(s.name, s.doc, labels, registry=reg) for s in GAUGES}
        self.counters = {s.key: Counter(s.name, s.doc, labels, registry=reg) for s in COUNTERS}
        self.steps = Counter("rft_train_steps", "Train steps completed by this process (rate() = step rate).",
                             labels, registry=reg)
        self.phase_seconds = Histogram(
            "rft_step_phase_duration_seconds",
            "Time a step spent in each phase: sampling (waiting for rollouts), training, sync (saving weights).",
            labels + ["phase"], buckets=STEP_BUCKETS, registry=reg,
        )
        self.step_seconds = Histogram("rft_step_duration_seconds", "Wall time of whole train steps.",
                                      labels, buckets=STEP_BUCKETS, registry=reg)
        self.last_progress = Gauge(
            "rft_last_progress_timestamp_seconds",
            "Unix time of the last finished step (the process start before the first): a stall is "
            "time() minus this.", labels, registry=reg,
        )
        self.start_time = Gauge("rft_start_time_seconds", "Unix time this runtime process started monitoring.",
                                labels, registry=reg)
        self.info = Info("rft_job", "The job's backend, algorithm and base model.", labels, registry=reg)
        now = time.time()
        self.start_time.labels(self.job_name).set(now)
        self.last_progress.labels(self.job_name).set(now)
        # Counters and histograms show zero from the start, so rate() works from the first scrape.
        for counter in self.counters.values():
            counter.labels(self.job_name)
        self.steps.labels(self.job_name)
        self.step_seconds.labels(self.job_name)
        for phase in PHASES:
            self.phase_seconds.labels(self.job_name, phase)

    # ------------------------------------------------------------ values

    def set_info(self, **values: Any) -> None:
        """Set the info metric's labels (None values become empty strings)."""
        with self._lock:
            self.info.labels(self.job_name).info({k: "" if v is None else str(v) for k, v in values.items()})

    def observe(self, record: dict[str, Any]) -> None:
        """Update every series from one step record; a gauge whose key is absent is removed, not kept stale."""
        job = self.job_name
        with self._lock:
            for keys, gauge in self.gauges.items():
                value = next((v for v in (as_float(record.get(k)) for k in keys) if v is not None), None)
                if value is None:
                    try:
                        gauge.remove(job)
                    except KeyError:
                        pass
                else:
                    gauge.labels(job).set(value)
            for key, counter in self.counters.items():
                value = as_float(record.get(key))
                if value is not None and value > 0:  # a counter only grows; a negative count is a caller bug
                    counter.labels(job).inc(value)
            for phase, key in PHASE_KEYS.items():
                value = as_float(record.get(key))
                if value is not None:
                    self.phase_seconds.labels(job, phase).observe(value)
            value = as_float(record.get("time/step"))
            if value is not None:
                self.step_seconds.labels(job).observe(value)
            self.steps.labels(job).inc()
            stamp = as_float(record.get("timestamp"))
            self.last_progress.labels(job).set(stamp if stamp is not None else time.time())

    # ------------------------------------------------------------ HTTP

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve /metrics on host:port (0 = a free port); a busy port falls back to a free one. Returns the port."""
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            if port == 0 or exc.errno != errno.EADDRINUSE:
                raise
            # losing the training run over a busy metrics port would be worse than a moved endpoint
            self._server, self._thread = start_http_server(0, addr=host, registry=self.registry)
            log.warning("metrics port %d is in use; serving /metrics on port %d instead",
                        port, self._server.server_port)
        self.port = int(self._server.server_port)
        self.host = host
        return self.port

    @property
    def url(self) -> str | None:
        """The /metrics URL (loopback when bound to all addresses)."""
        if self.port is None:
            return None
        host = "127.0.0.1" if self.host in (None, "", "0.0.0.0", "::") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop the HTTP server (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {sample key: value}.

    A sample's key is its name, followed by its labels in braces, sorted, when it has labels other than
    `rft_job` (one process serves one job, so that label adds nothing here):
    `rft_reward_mean`, `rft_step_phase_duration_seconds_sum{phase="training"}`.
    """
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != JOB_LABEL}
            key = sample.name
            if labels:
                key += "{" + ",".join(f'{k}="{labels[k]}"' for k in sorted(labels)) + "}"
            out[key] = float(sample.value)
    return out


def scrape(url: str, timeout: float = 5.0) -> dict[str, float]:
    """GET a runtime's /metrics URL and parse it with `parse_metrics` (raises OSError when unreachable)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http to a runtime we run
        return parse_metrics(response.read().decode("utf-8", "replace"))
