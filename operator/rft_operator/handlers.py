"""Thin kopf handlers: watch events fill the caches and wake jobs; a work queue runs `Controller.reconcile`.

kopf only watches: RFTJobs, ClusterRFTRuntimes, and each child kind once with a server-side label selector
(`cache.CHILD_SELECTOR`). Its event handlers keep the latest of each (trimmed, `cache`) and put the job in the
work queue (`workqueue`), which `settings.workers` workers take from: no job is reconciled twice at once, and
every job comes back at least every resync interval. kopf fills the indexes before any event handler runs, so
a reconcile never sees a job without the children it has.

kopf stores nothing on the objects and adds no finalizer: only event handlers and indexes are registered (a
daemon, a timer or a change handler would make kopf put its finalizer on every RFTJob, and deleting a job or
its namespace would then wait for a running operator). Children go with their RFTJob by ownerReferences.
At steady state the operator sends no API requests beyond those watches.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from rft_operator.builders import MANAGED_BY
from rft_operator.cache import (
    CHILD_KINDS,
    CHILD_SELECTOR,
    MANAGED_BY_LABEL,
    JobStore,
    child_key,
    pack,
    trim_child,
    unpack,
)
from rft_operator.connection import load_connection
from rft_operator.controller import Controller
from rft_operator.kube import GROUP, PLURAL, RUNTIME_PLURAL, VERSION, Kube
from rft_operator.leader import LeaseElector, default_namespace
from rft_operator.metrics import OperatorMetrics
from rft_operator.reconcile import Observed
from rft_operator.runtimes import RuntimeStore
from rft_operator.settings import Settings
from rft_operator.workqueue import WorkQueue

log = logging.getLogger("rft.operator")


@dataclass
class State:
    """What one operator run holds: the controller, the caches, the work queue, the metrics server."""

    controller: Controller | None = None
    settings: Settings = field(default_factory=Settings)
    jobs: JobStore = field(default_factory=JobStore)
    runtimes: RuntimeStore = field(default_factory=RuntimeStore)
    # the runtimes index changed since `runtimes` was taken from it
    runtimes_stale: bool = True
    queue: WorkQueue | None = None
    indexes: dict[str, Any] = field(default_factory=dict)
    workers: list[asyncio.Task[None]] = field(default_factory=list)
    metrics_server: Any = None
    metrics_port: int | None = None
    executor: concurrent.futures.ThreadPoolExecutor | None = None
    elector: LeaseElector | None = None
    # failed passes in a row, by job: the backoff before the next
    failures: dict[tuple[str, str], int] = field(default_factory=dict)


STATE = State()


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's connection from the same settings the operator's own client uses (`connection.load_connection`)."""
    conn = load_connection()
    expires = conn.expiration
    return kopf.ConnectionInfo(
        server=conn.server,
        ca_data=conn.ca_data,
        insecure=conn.insecure,
        username=conn.username if conn.password is not None else None,
        password=conn.password,
        token=conn.token,
        certificate_data=conn.cert_data,
        private_key_data=conn.key_data,
        default_namespace=conn.namespace,
        expiration=datetime.fromtimestamp(expires, tz=UTC) if expires else None,
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Build the controller, the queue and its workers, serve /metrics; keep kopf to the RBAC the table lists."""
    # kopf's own chatter (handler succeeded...) would double our events; warnings still go out
    settings.posting.level = logging.WARNING
    settings.scanning.disabled = True
    settings.watching.server_timeout = 60
    # kopf keeps a task per object that had an event until it idles this long, holding that object's last
    # event (a parsed RFTJob is some 60 KB of small objects): at the default 5 s a burst of 500 new jobs keeps
    # ~2000 of them alive at once, and the allocator's arenas they spread over stay allocated for good.
    # Every handler here is an event handler that returns at once, so a short idle loses nothing.
    settings.queueing.idle_timeout = 0.5
    for kind in CHILD_KINDS:
        # server-side: without it kopf would stream every pod and ConfigMap of the cluster and filter here
        settings.watching.label_selectors["v1", kind] = CHILD_SELECTOR
    ours = Settings.from_env()
    metrics = OperatorMetrics()
    STATE.settings = ours
    # reconciles run in threads (each waits on the API server); the default pool has cpu+4 threads, too few
    # when many jobs wait on slow scrapes at once
    STATE.executor = concurrent.futures.ThreadPoolExecutor(max_workers=ours.workers, thread_name_prefix="reconcile")
    loop = asyncio.get_running_loop()
    loop.set_default_executor(STATE.executor)
    kube = Kube.from_environment()
    STATE.jobs = JobStore()
    STATE.runtimes = RuntimeStore()
    STATE.runtimes_stale = True
    STATE.indexes = {}
    STATE.failures = {}
    STATE.queue = WorkQueue()
    STATE.controller = Controller(kube, ours, metrics, runtimes=STATE.runtimes)
    STATE.elector = None
    if ours.leader_elect:
        metrics.set_leader(False)
        STATE.queue.pause()

        def changed(leader: bool) -> None:  # from the elector's thread
            metrics.set_leader(leader)
            loop.call_soon_threadsafe(STATE.queue.resume if leader else STATE.queue.pause)

        STATE.elector = LeaseElector(kube, ours.lease_namespace or default_namespace(), ours.lease_name,
                                     lease_seconds=ours.lease_seconds,
                                     renew_deadline_seconds=ours.renew_deadline_seconds,
                                     retry_seconds=ours.retry_seconds, on_change=changed).start()
    STATE.workers = [asyncio.create_task(_worker(STATE.queue), name=f"rft-reconcile-{i}")
                     for i in range(ours.workers)]
    STATE.metrics_server, STATE.metrics_port = None, None
    if ours.metrics_port >= 0:
        # only when /metrics is served (metrics_port >= 0)
        from prometheus_client import start_http_server

        server, _thread = start_http_server(ours.metrics_port, addr=ours.metrics_host, registry=metrics.registry)
        STATE.metrics_server, STATE.metrics_port = server, server.server_address[1]
        log.info("operator metrics on http://%s:%s/metrics", ours.metrics_host, STATE.metrics_port)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    """Stop the workers, hand the Lease over, stop the metrics server and the reconcile threads."""
    for task in STATE.workers:
        task.cancel()
    await asyncio.gather(*STATE.workers, return_exceptions=True)
    STATE.workers = []
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
    if STATE.controller is not None:
        STATE.controller.kube.close()


def _remember_indexes(kwargs: dict[str, Any]) -> None:
    # kopf hands every handler its live indexes; the workers, which are not handlers, read them from here
    if not STATE.indexes:
        STATE.indexes = {name: kwargs[name] for name in ("rft_pods", "rft_services", "rft_configmaps", "rft_claims",
                                                         "rft_runtimes") if name in kwargs}


def _wake(key: tuple[str, str], delay: float = 0.0) -> None:
    if STATE.queue is not None:
        STATE.queue.add(key, delay)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def job_event(type: str, namespace: str, name: str, body: Any, **kwargs: Any) -> None:
    """Keep the job's latest spec and status, and reconcile it; a deletion drops what is kept about it."""
    _remember_indexes(kwargs)
    key = (namespace or body.get("metadata", {}).get("namespace", ""), name)
    if type == "DELETED":
        STATE.jobs.forget(key)
        STATE.failures.pop(key, None)
        if STATE.queue is not None:
            STATE.queue.forget(key)
        if STATE.controller is not None:
            STATE.controller.forget(*key)
        return
    STATE.jobs.put(key, body)
    _wake(key)


@kopf.index(GROUP, VERSION, RUNTIME_PLURAL)
async def rft_runtimes(name: str, body: Any, **_: Any) -> Any:
    """Every ClusterRFTRuntime: an index, so that kopf has them all before any job is reconciled (a job
    created while the operator was down must get the default runtime's values, not the operator's)."""
    meta = body.get("metadata") or {}
    kept = {"metadata": {k: meta[k] for k in ("name", "annotations", "creationTimestamp") if meta.get(k)},
            "spec": body.get("spec") or {}}
    return {name: pack(kept)}


@kopf.on.event(GROUP, VERSION, RUNTIME_PLURAL)
async def runtime_event(type: str, name: str, body: Any, **kwargs: Any) -> None:
    """A runtime changed: the next pass takes the runtimes from the index again; jobs waiting for this one (or
    without a runtimeRef, for the default) wake. Running jobs are not woken: a runtime's values reach a job's
    pods only when they are next created."""
    _remember_indexes(kwargs)
    STATE.runtimes_stale = True
    for key in STATE.jobs.waiting_for_runtime(name):
        _wake(key)


_CHILD_FILTER = {MANAGED_BY_LABEL: MANAGED_BY}


def _index(kind: str, namespace: str | None, body: Any) -> dict[tuple[str, str], bytes] | None:
    key = child_key(namespace, body)
    return {key: pack(trim_child(kind, body))} if key else None


@kopf.index("", "v1", "pods", labels=_CHILD_FILTER)
async def rft_pods(namespace: str, body: Any, **_: Any) -> Any:
    """Every job's pods, by (namespace, job)."""
    return _index("pods", namespace, body)


@kopf.index("", "v1", "services", labels=_CHILD_FILTER)
async def rft_services(namespace: str, body: Any, **_: Any) -> Any:
    """Every job's Services, by (namespace, job)."""
    return _index("services", namespace, body)


@kopf.index("", "v1", "configmaps", labels=_CHILD_FILTER)
async def rft_configmaps(namespace: str, body: Any, **_: Any) -> Any:
    """Every job's ConfigMaps, by (namespace, job)."""
    return _index("configmaps", namespace, body)


@kopf.index("", "v1", "persistentvolumeclaims", labels=_CHILD_FILTER)
async def rft_claims(namespace: str, body: Any, **_: Any) -> Any:
    """Every job's claims, by (namespace, job)."""
    return _index("persistentvolumeclaims", namespace, body)


async def _child_event(namespace: str, body: Any, **kwargs: Any) -> None:
    """A child changed (a pod's phase, a deletion by someone else): reconcile its job now, not at the resync."""
    _remember_indexes(kwargs)
    key = child_key(namespace, body)
    if key:
        _wake(key)


for _kind in CHILD_KINDS:
    kopf.on.event("", "v1", _kind, labels=_CHILD_FILTER, id=f"wake-on-{_kind}")(_child_event)


def _children(key: tuple[str, str]) -> dict[str, list[bytes]]:
    """The job's children as the indexes hold them (taken in the loop thread, which alone changes them)."""
    indexes = STATE.indexes
    return {kind: list(indexes[index].get(key, ())) if index in indexes else [] for kind, index in (
        ("pods", "rft_pods"), ("services", "rft_services"), ("configmaps", "rft_configmaps"),
        ("persistentvolumeclaims", "rft_claims"))}


def _reconcile(controller: Controller, key: tuple[str, str], job: bytes, children: dict[str, list[bytes]]) -> Any:
    """One reconcile in a worker thread, on private copies of the job and its children."""
    observed = Observed(**{kind: [unpack(blob) for blob in blobs] for kind, blobs in children.items()})
    return controller.reconcile(key[0], key[1], unpack(job), observed)


async def _worker(queue: WorkQueue) -> None:
    """Take due jobs from the queue and reconcile each in a thread, until the operator stops."""
    loop = asyncio.get_running_loop()
    failures = STATE.failures
    while True:
        key = await queue.get()
        next_in: float | None = STATE.settings.resync_seconds
        try:
            job = STATE.jobs.raw(key)
            controller = STATE.controller
            if STATE.runtimes_stale and "rft_runtimes" in STATE.indexes:
                STATE.runtimes_stale = False
                STATE.runtimes.replace_all(unpack(blob) for store in STATE.indexes["rft_runtimes"].values()
                                           for blob in store)
            if job is None or controller is None:
                next_in = None
                continue
            plan = await loop.run_in_executor(STATE.executor, _reconcile, controller, key, job, _children(key))
            failures.pop(key, None)
            if plan is None:
                next_in = None  # being deleted: its DELETED event ends it
            elif plan.requeue_after is not None:
                next_in = min(next_in, plan.requeue_after)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next pass may succeed (API blips, conflicts); back off meanwhile
            failures[key] = failures.get(key, 0) + 1
            next_in = min(next_in or STATE.settings.resync_seconds, 2.0 ** min(failures[key], 5))
            log.error("reconcile of %s/%s failed (%s); retrying in %.0fs", key[0], key[1], exc, next_in)
        finally:
            queue.done(key, next_in)
