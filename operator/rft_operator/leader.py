"""Leader election over a coordination.k8s.io Lease, so that several operator replicas never act at once.

Why a Lease and not kopf's peering: a Lease is the API every Kubernetes controller uses (kube-controller-
manager, controller-runtime), needs no extra CRD in the cluster, and its RBAC can be narrowed to one named
object in the operator's own namespace. kopf's peering needs its KopfPeering CRDs installed cluster-wide and
lets replicas of equal priority run side by side (it only warns).

Every replica runs kopf and keeps its watch caches warm; only the replica holding the Lease reconciles (the
daemons ask `is_leader()` before each pass). The algorithm is client-go's: the holder renews every
`retry_seconds`; it stops acting once `renew_deadline_seconds` pass without a successful renewal, which is
shorter than the `lease_seconds` a candidate waits, measured on its own clock from the moment it last saw
the Lease change (so clock skew between nodes does not matter). Acquiring and renewing are a compare-and-swap:
a JSON patch whose `test` of the whole old spec fails when another replica wrote in between.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rft_operator import kube as k

log = logging.getLogger("rft.operator.leader")


def _micro_time(now: float) -> str:
    """A Lease's MicroTime (RFC 3339 with microseconds)."""
    return datetime.fromtimestamp(now, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    """The pod name (the chart passes it as POD_NAME) or the host name, plus a suffix unique to this process."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def default_namespace() -> str:
    """The namespace of the operator's own pod when in a cluster, else `default`."""
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    try:
        with open(path) as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


class LeaseElector:
    """Acquires and renews one Lease; `is_leader()` says whether this replica may act now."""

    def __init__(self, kube: k.Kube, namespace: str, name: str, identity: str | None = None, *,
                 lease_seconds: float = 15.0, renew_deadline_seconds: float = 10.0, retry_seconds: float = 2.0,
                 on_change: Callable[[bool], None] | None = None):
        if not retry_seconds < renew_deadline_seconds < lease_seconds:
            raise ValueError("leader election needs retry < renew deadline < lease duration")
        self.kube = kube
        self.namespace, self.name = namespace, name
        self.identity = identity or default_identity()
        self.lease_seconds = lease_seconds
        self.renew_deadline_seconds = renew_deadline_seconds
        self.retry_seconds = retry_seconds
        self._renewed: float | None = None
        self._seen: tuple[Any, ...] | None = None
        self._seen_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._was_leader = False
        self._on_change = on_change

    def is_leader(self) -> bool:
        """True while the last successful renewal is younger than the renew deadline."""
        renewed = self._renewed
        return renewed is not None and time.monotonic() - renewed < self.renew_deadline_seconds

    def try_acquire_or_renew(self) -> bool:
        """One round: create the Lease, renew ours, or take over an expired one. True when we hold it."""
        now = time.time()
        lease = self.kube.get(k.LEASES, self.namespace, self.name)
        if lease is None:
            spec = {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_seconds),
                    "acquireTime": _micro_time(now), "renewTime": _micro_time(now), "leaseTransitions": 0}
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
            if self.kube.create(k.LEASES, self.namespace, body):
                self._renewed = time.monotonic()
                return True
            return False  # another replica created it first
        old = dict(lease.get("spec") or {})
        holder = old.get("holderIdentity") or ""
        record = (holder, old.get("renewTime"), old.get("leaseDurationSeconds"))
        if record != self._seen:
            self._seen, self._seen_at = record, time.monotonic()
        duration = float(old.get("leaseDurationSeconds") or self.lease_seconds)
        mine = holder == self.identity
        if holder and not mine and time.monotonic() - self._seen_at < duration:
            return False  # held by a replica that renewed within its lease duration
        spec = {**old, "holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_seconds),
                "renewTime": _micro_time(now)}
        if not mine:
            spec["acquireTime"] = _micro_time(now)
            spec["leaseTransitions"] = int(old.get("leaseTransitions") or 0) + (1 if holder else 0)
        if not self._swap(old, spec):
            return False
        self._renewed = time.monotonic()
        return True

    def _swap(self, old: dict[str, Any], new: dict[str, Any]) -> bool:
        """Replace the Lease's spec only if it still equals `old` (the server applies a JSON patch atomically)."""
        ops = [{"op": "test", "path": "/spec", "value": old}, {"op": "replace", "path": "/spec", "value": new}]
        try:
            self.kube.patch(k.LEASES, self.namespace, self.name, ops, patch_type="json")
            return True
        except k.KubeError as exc:
            log.debug("lease %s/%s changed under us: %s", self.namespace, self.name, exc)
            return False

    def release(self) -> None:
        """Hand the Lease over at once (on a clean shutdown) instead of letting it expire."""
        if not self.is_leader():
            return
        self._renewed = None
        try:
            lease = self.kube.get(k.LEASES, self.namespace, self.name)
            old = dict((lease or {}).get("spec") or {})
            if old.get("holderIdentity") == self.identity:
                now = _micro_time(time.time())
                self._swap(old, {**old, "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": now})
                log.info("released the lease %s/%s", self.namespace, self.name)
        except k.KubeError as exc:
            log.warning("cannot release the lease %s/%s: %s", self.namespace, self.name, exc)

    def run(self) -> None:
        """Acquire and renew until stopped; log each change of leadership."""
        while not self._stop.is_set():
            try:
                self.try_acquire_or_renew()
            except k.KubeError as exc:  # an API blip: leadership lasts until the renew deadline
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            leader = self.is_leader()
            if leader != self._was_leader:
                self._was_leader = leader
                if leader:
                    log.info("%s leads (lease %s/%s)", self.identity, self.namespace, self.name)
                else:
                    log.warning("%s lost the lease %s/%s: standing by", self.identity, self.namespace, self.name)
                if self._on_change is not None:
                    self._on_change(leader)
            self._stop.wait(self.retry_seconds)

    def start(self) -> LeaseElector:
        """Run the election in a background thread."""
        log.info("%s waiting for the lease %s/%s", self.identity, self.namespace, self.name)
        self._thread = threading.Thread(target=self.run, name="leader-election", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop renewing and release the Lease."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.release()
