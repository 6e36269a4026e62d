"""Progress and results of a run: metrics.jsonl, the Prometheus endpoint, the progress bar, the plot.

    from rft_runtime.monitor import Monitor
    mon = Monitor(cfg, job_dir, metrics_port=0)   # 0: a free port; None: no endpoint
    mon.log_step({"step": 1, "total_steps": 10, "critic/rewards/mean": 0.5, ...})
    mon.close()                                   # writes <job_dir>/curves.png

Metric names and meanings: docs/metrics.md.
"""

from rft_runtime.monitor.exporter import parse_metrics, scrape
from rft_runtime.monitor.monitor import Monitor
from rft_runtime.monitor.records import METRICS_FILE, read_metrics

__all__ = ["METRICS_FILE", "Monitor", "parse_metrics", "read_metrics", "scrape"]
