"""`rft-operator`: run the RFTJob operator (kopf) in one namespace, several, or the whole cluster."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from rft_operator.kube import cluster_problem


def build_parser() -> argparse.ArgumentParser:
    """The operator's flags; each also has an RFT_OPERATOR_* environment variable (see docs/operator.md)."""
    p = argparse.ArgumentParser(prog="rft-operator", description="Run the RFTJob operator.")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=None,
                       help="watch this namespace (repeat for several); default: the whole cluster")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch the whole cluster (default)")
    p.add_argument("--liveness", default=os.environ.get("RFT_OPERATOR_LIVENESS", "http://127.0.0.1:8081/healthz"),
                   help="liveness endpoint URL ('' to disable); the chart uses http://0.0.0.0:8081/healthz")
    p.add_argument("--metrics-host", default=None, help="address of /metrics (RFT_OPERATOR_METRICS_HOST)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="port of /metrics, -1 disables it (RFT_OPERATOR_METRICS_PORT, default 8080)")
    p.add_argument("--resync-seconds", type=float, default=None, help="reconcile every job at least this often")
    p.add_argument("--progress-interval-seconds", type=float, default=None,
                   help="scrape a running job's metrics at most this often")
    p.add_argument("--stall-after-seconds", type=float, default=None,
                   help="Stalled=True after this long without a new step")
    p.add_argument("--default-image", default=None,
                   help="runtime image when spec.image is empty (reaches a job when its pods are next created)")
    p.add_argument("--config-from-refresh-seconds", type=float, default=None,
                   help="read a spec.configFrom ConfigMap again at most this often (default 60)")
    p.add_argument("--leader-elect", action="store_true", default=None,
                   help="run several replicas: only the holder of a coordination.k8s.io Lease reconciles")
    p.add_argument("--lease-name", default=None, help="the Lease's name (default rft-operator)")
    p.add_argument("--lease-namespace", default=None,
                   help="the Lease's namespace (default: the operator pod's own namespace)")
    p.add_argument("--default-verl-image", default=None,
                   help="image of veRL jobs when spec.image is empty (RFT_OPERATOR_DEFAULT_VERL_IMAGE)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


# kopf imports these when they are installed, at its import and when its first handler is registered, only
# to recognise their model classes and to offer their logins; the operator hands kopf plain dicts and logs in
# itself (rft_operator.connection), and the kubernetes client alone is ~30 MB of memory
KOPF_OPTIONAL_CLIENTS = ("kubernetes", "kubernetes_asyncio", "pykube")


@contextlib.contextmanager
def without_optional_clients() -> Iterator[None]:
    """Within the block, the client libraries kopf would import for nothing look absent (afterwards they
    are importable again)."""
    blocked = [name for name in KOPF_OPTIONAL_CLIENTS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` raise ImportError
    try:
        yield
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `rft-operator` console script."""
    args = build_parser().parse_args(argv)
    for flag, var in (("metrics_host", "METRICS_HOST"), ("metrics_port", "METRICS_PORT"),
                      ("resync_seconds", "RESYNC_SECONDS"), ("progress_interval_seconds", "PROGRESS_INTERVAL_SECONDS"),
                      ("stall_after_seconds", "STALL_AFTER_SECONDS"), ("default_image", "DEFAULT_IMAGE"),
                      ("default_verl_image", "DEFAULT_VERL_IMAGE"),
                      ("config_from_refresh_seconds", "CONFIG_FROM_REFRESH_SECONDS"),
                      ("leader_elect", "LEADER_ELECT"), ("lease_name", "LEASE_NAME"),
                      ("lease_namespace", "LEASE_NAMESPACE")):
        value = getattr(args, flag)
        if value is not None:
            os.environ[f"RFT_OPERATOR_{var}"] = str(value)

    # kopf would retry an unreachable server forever, which looks like a healthy operator with nothing to do
    problem = cluster_problem()
    if problem:
        print(f"rft-operator: {problem}", file=sys.stderr)
        return 1

    with without_optional_clients():  # kopf would import the client libraries it finds (memory for nothing)
        import kopf

        import rft_operator.handlers  # noqa: F401  (registers the handlers)

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    namespaces = args.namespace or []
    kopf.run(
        # kopf's peering stays off: several replicas coordinate through a Lease instead (rft_operator.leader)
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=args.liveness or None,
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
