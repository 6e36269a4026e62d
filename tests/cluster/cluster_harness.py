"""Helpers of the cluster tests: polling, the operator run in-process against a real API server.

Everything here skips (with the reason) when KUBECONFIG names no reachable cluster. The tests assume nothing
beyond a conformant API server: pods need not be schedulable, images need not be pullable.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "rft.dev", "v1alpha1", "rftjobs"


def wait_for(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll until check() is truthy (API errors count as not yet)."""
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (ApiException, KeyError, TypeError):
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.contextmanager
def operator_for(namespace: str) -> Iterator[Any]:
    """The real operator, watching one namespace with the kubeconfig's credentials."""
    from kopf.testing import KopfRunner

    from rft_operator import handlers

    os.environ.setdefault("RFT_OPERATOR_METRICS_PORT", "0")
    os.environ.setdefault("RFT_OPERATOR_RESYNC_SECONDS", "2")
    handlers.STATE.metrics_port = None
    with KopfRunner(["run", "--standalone", "-n", namespace, "-m", "rft_operator.handlers"], timeout=120) as runner:
        wait_for(lambda: handlers.STATE.metrics_port, 30, "the operator to start")
        yield runner
    assert runner.exit_code == 0, runner.output


def raw_request(api_client: Any, method: str, path: str, *, headers: dict[str, str] | None = None,
                body: Any = None, params: list[tuple[str, str]] | None = None) -> tuple[int, Any]:
    """A request the generated client has no method for (apply patches, Table output): (status, JSON)."""
    import json

    request = api_client.param_serialize(method, path, query_params=params,
                                         header_params={"Accept": "application/json", **(headers or {})},
                                         body=body, auth_settings=["BearerToken"])
    response = api_client.call_api(*request)
    response.read()
    return response.status, json.loads(response.data or b"null")
