"""Thin kopf handlers: one daemon per RFTJob runs `Controller.reconcile`, watch events only wake it.

A per-job daemon serialises all work on a job (no two reconciles of one job at once) and gives a natural
periodic resync; pod and RFTJob events cut the wait short. kopf stores no handler progress on the object:
the operator's state is the RFTJob's status and its children.

Reads come from memory: kopf watches RFTJobs, and each child kind once with a server-side label selector
(`cache.CHILD_SELECTOR`); the indexes below hold every job's children, trimmed, and kopf fills them before
any daemon starts. At steady state the operator sends no API requests beyond those watches.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import kopf

from rft_operator.builders import MANAGED_BY
from rft_operator.cache import CHILD_KINDS, CHILD_SELECTOR, MANAGED_BY_LABEL, child_key, trim_child
from rft_operator.controller import Controller
from rft_operator.kube import GROUP, PLURAL, VERSION, Kube, load_configuration
from rft_operator.leader import LeaseElector, default_namespace
from rft_operator.metrics import OperatorMetrics
from rft_operator.reconcile import Observed
from rft_operator.settings import Settings

log = logging.getLogger("rft.operator")


@dataclass
class State:
    """What one operator run holds: the controller, wake-up events per job, the metrics server."""

    controller: Controller | None = None
    settings: Settings = field(default_factory=Settings)
    wakeups: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    metrics_server: Any = None
    metrics_port: int | None = None
    executor: concurrent.futures.ThreadPoolExecutor | None = None
    elector: LeaseElector | None = None

    def leading(self) -> bool:
        """Whether this replica may reconcile now (always, without leader election)."""
        return self.elector is None or self.elector.is_leader()


STATE = State()


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """kopf's connection from the same configuration the operator's client uses (see kube.load_configuration)."""
    config = load_configuration()
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        username=config.username or None,
        password=config.password or None,
        scheme=scheme,
        token=token,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
        trust_env=settings.networking.trust_env,
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Build the controller and serve /metrics; keep kopf from needing more RBAC than the table lists."""
    # kopf's own chatter (handler succeeded...) would double our events; warnings still go out
    settings.posting.level = logging.WARNING
    settings.scanning.disabled = True
    settings.watching.server_timeout = 60
    for kind in CHILD_KINDS:
        # server-side: without it kopf would stream every pod and ConfigMap of the cluster and filter here
        settings.watching.label_selectors["v1", kind] = CHILD_SELECTOR
    ours = Settings.from_env()
    metrics = OperatorMetrics()
    STATE.settings = ours
    # reconciles run in threads (the kubernetes client is synchronous); the default pool has cpu+4 threads,
    # too few when many jobs wait on slow scrapes at once
    STATE.executor = concurrent.futures.ThreadPoolExecutor(max_workers=ours.workers, thread_name_prefix="reconcile")
    asyncio.get_running_loop().set_default_executor(STATE.executor)
    kube = Kube.from_environment()
    STATE.controller = Controller(kube, ours, metrics)
    STATE.elector = None
    if ours.leader_elect:
        metrics.set_leader(False)
        STATE.elector = LeaseElector(kube, ours.lease_namespace or default_namespace(), ours.lease_name,
                                     lease_seconds=ours.lease_seconds,
                                     renew_deadline_seconds=ours.renew_deadline_seconds,
                                     retry_seconds=ours.retry_seconds, on_change=metrics.set_leader).start()
    STATE.wakeups = {}
    STATE.metrics_server, STATE.metrics_port = None, None
    if ours.metrics_port >= 0:
        from prometheus_client import start_http_server

        server, _thread = start_http_server(ours.metrics_port, addr=ours.metrics_host, registry=metrics.registry)
        STATE.metrics_server, STATE.metrics_port = server, server.server_address[1]
        log.info("operator metrics on http://%s:%s/metrics", ours.metrics_host, STATE.metrics_port)


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    """Hand the Lease over, stop the metrics server and the reconcile threads (tests start many operators)."""
    if STATE.elector is not None:
        STATE.elector.stop()
        STATE.elector = None
    if STATE.metrics_server is not None:
        STATE.metrics_server.shutdown()
        STATE.metrics_server.server_close()
        STATE.metrics_server = None
    if STATE.executor is not None:
        STATE.executor.shutdown(wait=False, cancel_futures=True)
        STATE.executor = None


def _wake(namespace: str | None, name: str | None) -> None:
    event = STATE.wakeups.get((namespace or "", name or ""))
    if event is not None:
        event.set()


def _plain(body: Any) -> dict[str, Any]:
    """A kopf body as a plain dict a reconcile thread can own."""
    return {k: copy.deepcopy(dict(v) if hasattr(v, "keys") else v) for k, v in dict(body).items()}


@kopf.on.event(GROUP, VERSION, PLURAL)
def job_event(type: str, namespace: str, name: str, body: Any, **_: Any) -> None:
    """A spec or status change wakes the job's daemon; a deletion drops its metric series."""
    ns = namespace or body.get("metadata", {}).get("namespace", "")
    if type == "DELETED" and STATE.controller is not None:
        STATE.controller.forget(ns, name)
    _wake(ns, name)


_CHILD_FILTER = {MANAGED_BY_LABEL: MANAGED_BY}


def _index(kind: str, namespace: str | None, body: Any) -> dict[tuple[str, str], dict[str, Any]] | None:
    key = child_key(namespace, body)
    return {key: trim_child(kind, _plain(body))} if key else None


@kopf.index("", "v1", "pods", labels=_CHILD_FILTER)
def rft_pods(namespace: str, body: Any, **_: Any) -> Any:
    """Every job's pods, by (namespace, job)."""
    return _index("pods", namespace, body)


@kopf.index("", "v1", "services", labels=_CHILD_FILTER)
def rft_services(namespace: str, body: Any, **_: Any) -> Any:
    """Every job's Services, by (namespace, job)."""
    return _index("services", namespace, body)


@kopf.index("", "v1", "configmaps", labels=_CHILD_FILTER)
def rft_configmaps(namespace: str, body: Any, **_: Any) -> Any:
    """Every job's ConfigMaps, by (namespace, job)."""
    return _index("configmaps", namespace, body)


@kopf.index("", "v1", "persistentvolumeclaims", labels=_CHILD_FILTER)
def rft_claims(namespace: str, body: Any, **_: Any) -> Any:
    """Every job's claims, by (namespace, job)."""
    return _index("persistentvolumeclaims", namespace, body)


def _child_event(namespace: str, body: Any, **_: Any) -> None:
    """A child changed (a pod's phase, a deletion by someone else): wake its job now, not at the resync."""
    key = child_key(namespace, body)
    if key:
        _wake(*key)


for _kind in CHILD_KINDS:
    kopf.on.event("", "v1", _kind, labels=_CHILD_FILTER, id=f"wake-on-{_kind}")(_child_event)


def _observed(key: tuple[str, str], indexes: dict[str, Any]) -> Observed:
    """The job's children from the indexes, as lists the reconcile thread owns (taken in the loop thread)."""
    return Observed(**{kind: list(indexes[index].get(key, ())) for kind, index in (
        ("pods", "rft_pods"), ("services", "rft_services"), ("configmaps", "rft_configmaps"),
        ("persistentvolumeclaims", "rft_claims"))})


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0)
async def job_daemon(namespace: str, name: str, body: Any, stopped: Any, logger: Any, **kwargs: Any) -> None:
    """Reconcile one RFTJob whenever woken, and at least every resync interval, until it is deleted."""
    ns = namespace or body.get("metadata", {}).get("namespace", "")
    key = (ns, name)
    wake = STATE.wakeups.setdefault(key, asyncio.Event())
    failures = 0
    try:
        while not stopped:
            if not STATE.leading():
                # a standby keeps its caches warm and waits; on taking over it reconciles at once anyway
                wake.clear()
                await _sleep(wake, stopped, STATE.settings.retry_seconds)
                continue
            wake.clear()
            controller = STATE.controller
            delay = STATE.settings.resync_seconds
            try:
                assert controller is not None, "the operator has not started"
                # kopf keeps `body` current with the watch: a copy of it is the job as the cluster has it now
                plan = await asyncio.to_thread(controller.reconcile, ns, name, _plain(body), _observed(key, kwargs))
                failures = 0
                if plan is None:
                    break
                if plan.requeue_after is not None:
                    delay = min(delay, plan.requeue_after)
            except Exception as exc:  # keep the daemon alive: the next pass may succeed (API blips, conflicts)
                failures += 1
                delay = min(delay, 2.0 ** min(failures, 5))
                logger.error("reconcile of %s/%s failed (%s); retrying in %.0fs", ns, name, exc, delay)
            await _sleep(wake, stopped, delay)
    finally:
        if STATE.wakeups.get(key) is wake:
            del STATE.wakeups[key]


async def _sleep(wake: asyncio.Event, stopped: Any, delay: float) -> None:
    """Wait for a wake-up or the delay, checking the stop flag at least every half second."""
    loop = asyncio.get_running_loop()
    until = loop.time() + delay
    while not stopped and not wake.is_set():
        left = until - loop.time()
        if left <= 0:
            return
        try:
            await asyncio.wait_for(wake.wait(), timeout=min(left, 0.5))
        except TimeoutError:
            pass
