"""Monitor: one step record feeds metrics.jsonl, Prometheus, the progress bar and any tracker."""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from rft_runtime.monitor.exporter import Exporter
from rft_runtime.monitor.plot import read_evals, write_plot
from rft_runtime.monitor.progress import Progress
from rft_runtime.monitor.records import append_record, as_float, metrics_path, read_metrics, to_plain
from rft_runtime.monitor.sinks import Sink, open_sinks

log = logging.getLogger(__name__)

HOST_ENV = "RFT_METRICS_HOST"  # the operator sets 0.0.0.0 in pods so it can scrape the pod IP
JOB_NAME_ENV = "RFT_JOB_NAME"  # the RFTJob's name in a pod
PLOT_FILE = "curves.png"


def _get(obj: Any, dotted: str, default: Any = None) -> Any:
    # duck-typed reads: JobConfig, a stage config, a SimpleNamespace in tests, or None
    for part in dotted.split("."):
        if obj is None:
            return default
        obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part, None)
    return default if obj is None else obj


def _set_in_config(section: Any, field: str) -> bool:
    """Whether the config itself set `field` of `section` (not a default); True when that cannot be told."""
    if isinstance(section, dict):
        return field in section
    fields_set = getattr(section, "model_fields_set", None)
    return True if fields_set is None else field in fields_set


class Monitor:
    """Per-step metrics of one job: JSON lines, a Prometheus endpoint, a progress bar, optional trackers."""

    def __init__(
        self, cfg: Any, job_dir: str | Path, metrics_port: int | None = None, progress: bool = True,
        *, metrics_host: str | None = None, job_name: str | None = None,
    ):
        self.cfg = cfg
        self.job_dir = Path(job_dir)
        self.job_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_file = metrics_path(self.job_dir)
        self.job_name = job_name or os.environ.get(JOB_NAME_ENV) or str(_get(cfg, "name", "") or self.job_dir.name)
        self.exporter = Exporter(self.job_name)
        self.port: int | None = None
        self._closed = False
        self._last_step: int | None = None
        if metrics_port is not None:
            host = metrics_host or os.environ.get(HOST_ENV) or "127.0.0.1"
            self.port = self.exporter.serve(int(metrics_port), host)
            log.info("serving Prometheus metrics at http://%s:%d/metrics", host, self.port)
        self.progress = Progress(enabled=progress)
        self.sinks: list[Sink] = open_sinks(
            _get(cfg, "monitor.monitor_type", "none"),
            {"project": _get(cfg, "project"), "group": _get(cfg, "group"), "name": _get(cfg, "name")},
            _get(cfg, "monitor.monitor_args"), str(self.job_dir), _resolved(cfg),
            requested=_set_in_config(_get(cfg, "monitor"), "monitor_type"),
        )
        backend = _get(cfg, "backend")
        if backend is not None:
            self.set_info(backend=backend, algorithm=_get(cfg, "algorithm.algorithm_type"),
                          base_model=_get(cfg, "model.tinker_base_model"))

    @property
    def url(self) -> str | None:
        """The /metrics URL on loopback, or None when not serving."""
        return self.exporter.url

    def set_info(self, backend: Any = None, algorithm: Any = None, base_model: Any = None) -> None:
        """Set the rft_job_info labels (called again when a new stage changes the algorithm)."""
        self.exporter.set_info(backend=backend, algorithm=algorithm, base_model=base_model)

    def start_stage(self, name: str, total_steps: int | None, done: int = 0) -> None:
        """A stage begins (`done` of its steps already trained, when resumed): it gets its own progress bar."""
        self.progress.start_stage(name, total_steps, done)

    def log_step(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append the step to metrics.jsonl and update Prometheus, the bar and trackers; returns the line."""
        line = {k: to_plain(v) for k, v in record.items()}
        line.setdefault("timestamp", time.time())
        append_record(self.job_dir, line)
        self.exporter.observe(line)
        self._last_step = line.get("step") if isinstance(line.get("step"), int) else self._last_step
        self.progress.update(line)
        if self.sinks:
            self._to_sinks(line)
        return line

    def _to_sinks(self, line: dict[str, Any]) -> None:
        numbers = {}
        for key, value in line.items():
            number = as_float(value)
            if key not in ("step", "timestamp") and number is not None and not math.isnan(number):
                numbers[key] = number
        step = int(line.get("step") or 0)
        for sink in list(self.sinks):
            try:
                sink.log(numbers, step)
            except Exception as exc:  # a tracker outage must not stop training
                log.warning("dropping tracker %s after an error: %s", type(sink).__name__, exc)
                self.sinks.remove(sink)

    def write_plot(self, out: str | Path | None = None) -> Path | None:
        """Write the reward/loss PNG for this job (None when no step was logged)."""
        records = read_metrics(self.job_dir)
        if not records:
            return None
        return write_plot(records, Path(out) if out else self.job_dir / PLOT_FILE,
                          title=str(_get(self.cfg, "name", "") or self.job_name), evals=read_evals(self.job_dir))

    def close(self) -> None:
        """Write the plot, finish the bar and trackers, stop the HTTP server (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.progress.close()
            path = None
            try:
                path = self.write_plot()
            except Exception as exc:  # the plot is a convenience; losing it must not fail a finished run
                log.warning("could not write the reward/loss plot: %s", exc)
            if path is not None:
                log.info("reward and loss curves in %s", path)
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception as exc:
                    log.warning("tracker %s did not close cleanly: %s", type(sink).__name__, exc)
            self.sinks = []
        finally:
            self.exporter.stop()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _resolved(cfg: Any) -> dict[str, Any] | None:
    fn = getattr(cfg, "resolved_dict", None)
    if fn is None:
        return None
    try:
        return fn()
    except Exception:  # trackers get the config as a courtesy; a config that cannot render is no reason to stop
        return None
