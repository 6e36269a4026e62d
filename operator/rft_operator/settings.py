"""Operator settings: flags of `rft-operator`, each also readable from an RFT_OPERATOR_* variable."""

from __future__ import annotations

import os
from dataclasses import dataclass

from rft_operator.spec import DEFAULT_IMAGE, DEFAULT_VERL_IMAGE


def _env(name: str, default: str) -> str:
    return os.environ.get(f"RFT_OPERATOR_{name}", default)


@dataclass
class Settings:
    """What an operator deployment tunes (see docs/operator.md)."""

    # Prometheus /metrics of the operator; port 0 picks a free port, -1 turns it off. Loopback by default
    # (the chart sets 0.0.0.0 so that Prometheus can reach it).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 8080
    # Every job is reconciled at least this often, even without watch events.
    resync_seconds: float = 30.0
    # A running job's metrics endpoint is scraped at most this often (bounds status writes too).
    progress_interval_seconds: float = 30.0
    # A running job without a new step for this long gets Stalled=True (spec.progressDeadlineSeconds wins).
    stall_after_seconds: float = 1800.0
    # Image of the runtime pods when spec.image is empty.
    default_image: str = DEFAULT_IMAGE
    # Image of veRL jobs' pods when spec.image is empty: the GPU image (CUDA, trinity-rft, vllm, Ray).
    default_verl_image: str = DEFAULT_VERL_IMAGE
    # Seconds the HTTP scrape of a pod may take.
    scrape_timeout_seconds: float = 5.0
    # A spec.configFrom ConfigMap (the user's, not watched) is read again at most this often.
    config_from_refresh_seconds: float = 60.0
    # The RayCluster of spec.rayClusterRef is read again at most this often while a job waits for it.
    ray_cluster_refresh_seconds: float = 5.0
    # Several replicas: only the holder of the Lease `lease_namespace`/`lease_name` reconciles (see leader.py).
    leader_elect: bool = False
    lease_name: str = "rft-operator"
    lease_namespace: str = ""  # empty: the operator pod's own namespace (`default` outside a cluster)
    lease_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0
    # Reconciles running at once (each holds a thread while it waits on the API server or a scrape).
    workers: int = 16

    @classmethod
    def from_env(cls) -> Settings:
        """Settings from RFT_OPERATOR_* environment variables, defaults otherwise."""
        return cls(
            metrics_host=_env("METRICS_HOST", cls.metrics_host),
            metrics_port=int(_env("METRICS_PORT", str(cls.metrics_port))),
            resync_seconds=float(_env("RESYNC_SECONDS", str(cls.resync_seconds))),
            progress_interval_seconds=float(_env("PROGRESS_INTERVAL_SECONDS", str(cls.progress_interval_seconds))),
            stall_after_seconds=float(_env("STALL_AFTER_SECONDS", str(cls.stall_after_seconds))),
            default_image=_env("DEFAULT_IMAGE", cls.default_image),
            default_verl_image=_env("DEFAULT_VERL_IMAGE", cls.default_verl_image),
            scrape_timeout_seconds=float(_env("SCRAPE_TIMEOUT_SECONDS", str(cls.scrape_timeout_seconds))),
            config_from_refresh_seconds=float(_env("CONFIG_FROM_REFRESH_SECONDS",
                                                   str(cls.config_from_refresh_seconds))),
            ray_cluster_refresh_seconds=float(_env("RAY_CLUSTER_REFRESH_SECONDS",
                                                   str(cls.ray_cluster_refresh_seconds))),
            workers=int(_env("WORKERS", str(cls.workers))),
            leader_elect=_env("LEADER_ELECT", "false").strip().lower() in ("1", "true", "yes"),
            lease_name=_env("LEASE_NAME", cls.lease_name),
            lease_namespace=_env("LEASE_NAMESPACE", cls.lease_namespace),
            lease_seconds=float(_env("LEASE_SECONDS", str(cls.lease_seconds))),
            renew_deadline_seconds=float(_env("RENEW_DEADLINE_SECONDS", str(cls.renew_deadline_seconds))),
            retry_seconds=float(_env("RETRY_SECONDS", str(cls.retry_seconds))),
        )
