"""Optional experiment trackers (monitor_type): wandb, tensorboard, mlflow, swanlab.

They are extras: when the package is missing, or the tracker fails to start, the run logs one warning and
goes on with the metrics file and Prometheus, which are always on.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

log = logging.getLogger(__name__)

KNOWN = ("wandb", "tensorboard", "mlflow", "swanlab")


class Sink:
    """One tracker: `log(record, step)` and `close()`."""

    def log(self, record: dict[str, float], step: int) -> None:
        """Send one step's numeric values."""

    def close(self) -> None:
        """Flush and finish."""


class WandbSink(Sink):
    """Weights & Biases run named project/group/name, as Trinity names it."""

    def __init__(self, names: dict[str, str | None], args: dict[str, Any], config: dict[str, Any] | None):
        import wandb  # an extra the job may not have (see the module docstring): imported when asked for

        kwargs = {"project": names["project"], "group": names["group"], "name": names["name"], "config": config}
        kwargs.update(args)
        self._wandb = wandb
        self._run = wandb.init(**kwargs)

    def log(self, record: dict[str, float], step: int) -> None:
        """Send one step's numeric values."""
        self._run.log(record, step=step)

    def close(self) -> None:
        """Flush and finish."""
        self._run.finish()


class TensorboardSink(Sink):
    """Event files under <job_dir>/tensorboard (or monitor_args.log_dir)."""

    def __init__(self, log_dir: str, args: dict[str, Any]):
        # extras, imported when asked for; torch's writer needs the tensorboard package anyway: look before
        # importing torch only to fail
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter
        elif importlib.util.find_spec("tensorboardX") is not None:
            from tensorboardX import SummaryWriter
        else:
            raise ImportError("No module named 'tensorboard' (nor 'tensorboardX')", name="tensorboard")
        self._writer = SummaryWriter(log_dir=args.get("log_dir", log_dir))

    def log(self, record: dict[str, float], step: int) -> None:
        """Send one step's numeric values."""
        for key, value in record.items():
            self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        """Flush and finish."""
        self._writer.close()


class MlflowSink(Sink):
    """An MLflow run in experiment <project>, named <group>/<name>."""

    def __init__(self, names: dict[str, str | None], args: dict[str, Any], config: dict[str, Any] | None):
        import mlflow  # an extra, imported when asked for

        self._mlflow = mlflow
        if args.get("tracking_uri"):
            mlflow.set_tracking_uri(args["tracking_uri"])
        mlflow.set_experiment(names["project"])
        mlflow.start_run(run_name=f"{names['group']}/{names['name']}")

    def log(self, record: dict[str, float], step: int) -> None:
        """Send one step's numeric values."""
        self._mlflow.log_metrics(record, step=step)

    def close(self) -> None:
        """Flush and finish."""
        self._mlflow.end_run()


class SwanlabSink(Sink):
    """A SwanLab experiment, named as the wandb run is."""

    def __init__(self, names: dict[str, str | None], args: dict[str, Any], config: dict[str, Any] | None):
        import swanlab  # an extra, imported when asked for

        kwargs = {"project": names["project"], "experiment_name": names["name"], "config": config}
        kwargs.update(args)
        self._swanlab = swanlab
        swanlab.init(**kwargs)

    def log(self, record: dict[str, float], step: int) -> None:
        """Send one step's numeric values."""
        self._swanlab.log(record, step=step)

    def close(self) -> None:
        """Flush and finish."""
        self._swanlab.finish()


def open_sinks(monitor_type: Any, names: dict[str, str | None], args: dict[str, Any] | None,
               job_dir: str, config: dict[str, Any] | None, *, requested: bool = True) -> list[Sink]:
    """The trackers monitor_type asks for that can start; one warning for each that cannot.

    `requested=False` is Trinity's default monitor_type, which the config did not set: it is used when its
    package is installed, and its absence is no news to a user who never asked for it (a debug line only).
    """
    kinds = monitor_type if isinstance(monitor_type, (list, tuple)) else [monitor_type]
    sinks: list[Sink] = []
    for kind in kinds:
        kind = (kind or "none").lower()
        if kind == "none":
            continue
        sink_args = dict(args or {})
        try:
            if kind == "wandb":
                sinks.append(WandbSink(names, sink_args, config))
            elif kind == "tensorboard":
                sinks.append(TensorboardSink(f"{job_dir}/tensorboard", sink_args))
            elif kind == "mlflow":
                sinks.append(MlflowSink(names, sink_args, config))
            elif kind == "swanlab":
                sinks.append(SwanlabSink(names, sink_args, config))
            else:
                log.warning("monitor_type %r is not one of %s; metrics go to metrics.jsonl and Prometheus only",
                            kind, ", ".join(KNOWN))
        except ImportError as exc:
            if not requested:
                log.debug("monitor_type %s (the default, not set in the config): the %s package is not "
                          "installed (%s); no %s files are written", kind, kind, exc, kind)
                continue
            log.warning("monitor_type %s: the %s package is not installed (%s); metrics go to metrics.jsonl "
                        "and Prometheus only (pip install %s to use it)", kind, kind, exc, kind)
        except Exception as exc:  # a tracker that cannot log in must not stop training
            log.warning("monitor_type %s could not start (%s: %s); metrics go to metrics.jsonl and "
                        "Prometheus only", kind, type(exc).__name__, exc)
    return sinks
