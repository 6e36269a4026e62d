"""The impure shell around `reconcile.plan_job`: take the job and its children from memory, decide, write.

The job and its children come from the watches (`rft_operator.cache`); the only reads left are of a
`spec.configFrom` ConfigMap (the user's, not a child: not watched), at most every
`config_from_refresh_seconds` per ConfigMap.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from rft_operator import kube as k
from rft_operator import status as st
from rft_operator.builders import HASH_ANNOTATION, pod_name
from rft_operator.cache import OwnWrites
from rft_operator.jobconfig import ConfigResult, parse_config_text, prepare_config
from rft_operator.metrics import OperatorMetrics
from rft_operator.progress import scrape
from rft_operator.reconcile import KINDS, Observed, Plan, plan_job, status_patch
from rft_operator.settings import Settings
from rft_operator.spec import JobSpec, parse_spec

log = logging.getLogger("rft.operator")

RESOURCES = {
    "pods": k.PODS,
    "configmaps": k.CONFIGMAPS,
    "services": k.SERVICES,
    "persistentvolumeclaims": k.PVCS,
}


def refused_for_good(exc: k.KubeError) -> bool:
    """A pod the server will refuse again as it is: invalid (400/422), or denied by Pod Security or an
    admission webhook. Not RBAC or quota denials (403 too), which a cluster admin or time can lift."""
    if exc.status in (400, 422):
        return True
    text = str(exc)
    return exc.status == 403 and ("violates PodSecurity" in text or "denied the request" in text)


# a write the watch has not confirmed by then is forgotten: the cache is the truth again
EXPECT_SECONDS = 30.0


class Controller:
    """Reconciles RFTJobs through `Kube`; holds only caches that are safe to lose (scrape times)."""

    def __init__(self, kube: k.Kube, settings: Settings, metrics: OperatorMetrics | None = None,
                 writes: OwnWrites | None = None):
        self.kube = kube
        self.settings = settings
        self.metrics = metrics or OperatorMetrics()
        self.writes = writes if writes is not None else OwnWrites()
        self._config_maps: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = {}
        # the operator's own child writes that the watch caches may not show yet: (ns, job) -> (kind, name) ->
        # (what, when, value); see expect()
        self._expected: dict[tuple[str, str], dict[tuple[str, str], tuple[str, float, Any]]] = {}
        self._scraped: dict[tuple[str, str], float] = {}
        self._forgotten: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._instance = socket.gethostname()

    # ---- reading

    def load_config(self, job: dict[str, Any], spec: JobSpec) -> tuple[ConfigResult, str]:
        """The job's config from spec.config or spec.configFrom, validated; with the failure reason to use."""
        meta = job["metadata"]
        body = job.get("spec") or {}
        source = body.get("configFrom") or {}
        if "config" in body and body["config"] is not None:
            data = body["config"]
        elif source.get("configMapKeyRef"):
            ref = source["configMapKeyRef"]
            key = ref.get("key") or "config.yaml"
            cm = self.config_map(meta["namespace"], ref["name"])
            where = f"ConfigMap {ref['name']} key {key}"
            if cm is None or key not in (cm.get("data") or {}):
                return ConfigResult(issues=[f"{where} not found"]), st.CONFIG_NOT_FOUND
            data, error = parse_config_text(cm["data"][key], where)
            if error:
                return ConfigResult(issues=[error]), st.INVALID_CONFIG
        else:
            return ConfigResult(issues=["set spec.config or spec.configFrom.configMapKeyRef"]), st.INVALID_CONFIG
        return prepare_config(data, spec, job_name=meta["name"], namespace=meta["namespace"]), st.INVALID_CONFIG

    def config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A configFrom ConfigMap, read again once the last read is older than the refresh interval.

        A missing one is asked for again after the resync interval: the user is probably about to create it.
        """
        now = time.monotonic()
        with self._lock:
            cached = self._config_maps.get((namespace, name))
        if cached is not None:
            fetched, body = cached
            ttl = self.settings.config_from_refresh_seconds if body is not None else self.settings.resync_seconds
            if now - fetched < ttl:
                return body
        body = self.kube.get(k.CONFIGMAPS, namespace, name)
        if body is not None:
            body = {"data": dict(body.get("data") or {})}
        with self._lock:
            self._config_maps[(namespace, name)] = (now, body)
        return body

    def progress(self, job: dict[str, Any], spec: JobSpec, observed: Observed, now: float) -> dict[str, Any] | None:
        """Fresh progress from the head pod's metrics endpoint when a scrape is due, else None (keep old)."""
        if not spec.metrics_enabled:
            return None
        meta = job["metadata"]
        key = (meta["namespace"], meta["name"])
        head = next((p for p in observed.pods if p["metadata"]["name"] == pod_name(meta["name"], "head")), None)
        if head is None or st.pod_phase(head) != "Running" or not (head.get("status") or {}).get("podIP"):
            return None
        with self._lock:
            last = self._scraped.get(key)
            if last is not None and now - last < self.settings.progress_interval_seconds:
                return None
            self._scraped[key] = now
        url = f"http://{head['status']['podIP']}:{spec.metrics_port}/metrics"
        try:
            fresh = scrape(url, timeout=self.settings.scrape_timeout_seconds)
        except (OSError, ValueError) as exc:
            log.info("cannot scrape %s for %s/%s: %s", url, *key, exc)
            return None
        if not fresh:
            return None
        if "step" in fresh:
            # one scrape is one step's values: a key the runtime dropped must not keep an older step's value
            return fresh
        # before its first step a (restarted) runtime reports only its start: keep the last known step
        old = dict(((job.get("status") or {}).get("progress")) or {})
        old.update(fresh)
        return old

    # ---- deciding and writing

    def reconcile(self, namespace: str, name: str, job: dict[str, Any], observed: Observed,
                  now: float | None = None) -> Plan | None:
        """One pass for the watched `job` (a private copy) and its `observed` children; None once it is deleted."""
        started = time.monotonic()
        self.metrics.reconciles.inc()
        try:
            job = self.writes.apply(namespace, name, job)
            if job.get("metadata", {}).get("deletionTimestamp"):
                return None
            job["metadata"].setdefault("namespace", namespace)
            observed = self.with_own_writes(namespace, name, observed)
            now = time.time() if now is None else now
            spec = parse_spec(job.get("spec") or {}, self.settings.default_image, self.settings.default_verl_image)
            config, reason = self.load_config(job, spec)
            progress = self.progress(job, spec, observed, now) if config.valid else None
            plan = plan_job(job, spec, config, observed, now=now, stall_after=self.settings.stall_after_seconds,
                            progress=progress, config_reason=reason)
            self.apply(job, plan, now)
            with self._lock:
                # a pass that began before the job's deletion must not bring its series back
                if self._forgotten.get((namespace, name), float("-inf")) < started:
                    self.metrics.observe_job(namespace, name, plan.status, now)
            return plan
        except Exception:
            self.metrics.errors.inc()
            raise
        finally:
            self.metrics.duration.observe(time.monotonic() - started)

    def apply(self, job: dict[str, Any], plan: Plan, now: float) -> None:
        """Status first (so a retry is counted before its pods go), then deletes, creates, patches, events."""
        meta = job["metadata"]
        ns, name = meta["namespace"], meta["name"]
        patch = status_patch(job.get("status") or {}, plan.status)
        if patch:
            answer = self.kube.patch(k.RFTJOBS, ns, name, {"status": patch}, subresource="status")
            if not (isinstance(answer, dict) and answer.get("metadata")):
                answer = {**job, "status": plan.status}  # a server that answers without the object
            self.writes.wrote(ns, name, answer, before=meta.get("resourceVersion"))
        for kind, child in plan.delete:
            self.kube.delete(RESOURCES[kind], ns, child)
            self.expect(ns, name, kind, child, "gone")
        for kind, body in plan.create:
            try:
                created = self.kube.create(RESOURCES[kind], ns, body)
            except k.KubeError as exc:
                if kind != "pods" or not refused_for_good(exc):
                    raise
                # the server refused the pod a template shaped (spec.podTemplate is not schema-checked by the
                # CRD): the job fails with the server's reason instead of retrying the same pod forever
                self.refuse_pod(job, plan, body, exc, now)
                return
            self.expect(ns, name, kind, body["metadata"]["name"], "present", body)
            if created and kind == "pods":
                log.info("created pod %s/%s (spec %s)", ns, body["metadata"]["name"],
                         body["metadata"]["labels"][HASH_ANNOTATION])
        for kind, child, body in plan.patch:
            self.kube.patch(RESOURCES[kind], ns, child, body)
            if "data" in body:
                self.expect(ns, name, kind, child, "data", body["data"])
        for etype, reason, message in plan.events:
            self.post_event(job, etype, reason, message, now)

    def refuse_pod(self, job: dict[str, Any], plan: Plan, pod: dict[str, Any], exc: Exception, now: float) -> None:
        """Fail the job with InvalidSpec and the API server's message for a pod it would not create."""
        meta = job["metadata"]
        message = f"invalid spec: the API server refused pod {pod['metadata']['name']}: {exc}"[:2000]
        old = dict(plan.status)
        new = {**old, "phase": st.FAILED, "reason": st.INVALID_SPEC, "message": message,
               "completionTime": st.timestamp(now)}
        new["conditions"] = st.build_conditions(st.FAILED, st.INVALID_SPEC, message, stalled=None,
                                                old=old.get("conditions"), now=now,
                                                generation=meta.get("generation"))
        patch = status_patch(old, new)
        if patch:
            answer = self.kube.patch(k.RFTJOBS, meta["namespace"], meta["name"], {"status": patch},
                                     subresource="status")
            if not (isinstance(answer, dict) and answer.get("metadata")):
                answer = {**job, "status": new}
            self.writes.wrote(meta["namespace"], meta["name"], answer, before=meta.get("resourceVersion"))
        plan.status = new
        for etype, reason, text in st.transition_events(old, new):
            self.post_event(job, etype, reason, text, now)

    def expect(self, namespace: str, job: str, kind: str, child: str, what: str, value: Any = None) -> None:
        """Remember a child write until the watch cache shows it (or EXPECT_SECONDS pass).

        Without this a reconcile woken by its own status write, before the child's watch event arrives,
        would send the same create, delete or patch again.
        """
        with self._lock:
            self._expected.setdefault((namespace, job), {})[(kind, child)] = (what, time.monotonic(), value)

    def with_own_writes(self, namespace: str, job: str, observed: Observed) -> Observed:
        """`observed` with the operator's own writes the caches do not show yet; settled ones are dropped."""
        with self._lock:
            expected = dict(self._expected.get((namespace, job)) or {})
        if not expected:
            return observed
        out = Observed(**{kind: list(observed.of(kind)) for kind in KINDS})
        settled = []
        now = time.monotonic()
        for (kind, child), (what, since, value) in expected.items():
            items = out.of(kind)
            index = next((i for i, o in enumerate(items) if o["metadata"]["name"] == child), None)
            current = items[index] if index is not None else None
            if now - since > EXPECT_SECONDS:
                settled.append((kind, child))
            elif what == "present":
                if current is None:
                    items.append(value)
                else:
                    settled.append((kind, child))
            elif what == "gone":
                if current is None or (current.get("metadata") or {}).get("deletionTimestamp"):
                    settled.append((kind, child))
                else:
                    meta = {**current["metadata"], "deletionTimestamp": st.timestamp(time.time())}
                    items[index] = {**current, "metadata": meta}
            elif what == "data" and current is not None:
                if current.get("data") == value:
                    settled.append((kind, child))
                else:
                    items[index] = {**current, "data": value}
        if settled:
            with self._lock:
                mine = self._expected.get((namespace, job)) or {}
                for key in settled:
                    if mine.get(key) == expected[key]:
                        mine.pop(key, None)
                if not mine:
                    self._expected.pop((namespace, job), None)
        return out

    def post_event(self, job: dict[str, Any], etype: str, reason: str, message: str, now: float) -> None:
        """A core/v1 Event on the RFTJob (best effort: a lost event must not fail the reconcile)."""
        meta = job["metadata"]
        stamp = st.timestamp(now)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            # a unique name instead of generateName: not every server fills generateName in
            "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{k.GROUP}/{k.VERSION}", "kind": k.KIND, "name": meta["name"],
                "namespace": meta["namespace"], "uid": meta.get("uid", ""),
            },
            "type": etype,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "rft-operator"},
            "reportingComponent": "rft-operator",
            "reportingInstance": self._instance,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.kube.create(k.EVENTS, meta["namespace"], body)
        except k.KubeError as exc:
            log.warning("cannot post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc)

    def forget(self, namespace: str, name: str) -> None:
        """Drop what the operator keeps about a deleted job (metric series, scrape times)."""
        with self._lock:
            self._forgotten[(namespace, name)] = time.monotonic()
            self.metrics.forget_job(namespace, name)
            self._scraped.pop((namespace, name), None)
            self._expected.pop((namespace, name), None)
        self.writes.forget(namespace, name)
