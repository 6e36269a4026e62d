"""The impure shell around `reconcile.plan_job`: take the job and its children from memory, decide, write.

The job, its children and the runtimes come from the watches (`rft_operator.cache`, `runtimes`); the only
reads left are of what the user names and the operator does not watch: a `spec.configFrom` ConfigMap (at
most every `config_from_refresh_seconds`), and the RayCluster of `spec.rayClusterRef` while the job has no
pod running (at most every `ray_cluster_refresh_seconds`; never once its pod runs).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from typing import Any

from rft_operator import kube as k
from rft_operator import raycluster
from rft_operator import status as st
from rft_operator.builders import HASH_ANNOTATION, pod_name, ray_cluster_service, spec_hash
from rft_operator.cache import OwnWrites, data_digest, pack, trim_child, unpack
from rft_operator.jobconfig import ConfigCache, ConfigResult, parse_config_text
from rft_operator.metrics import OperatorMetrics
from rft_operator.progress import scrape
from rft_operator.reconcile import KINDS, Observed, Plan, Waiting, plan_job, status_patch
from rft_operator.runtimes import RuntimeStore, select
from rft_operator.settings import Settings
from rft_operator.spec import JobSpec, parse_spec

# the finalizer kopf put on every RFTJob while the operator ran one daemon per job (releases up to 0.1.x):
# removed from each job once, so that deleting it never waits for a running operator
LEGACY_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"

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
                 writes: OwnWrites | None = None, runtimes: RuntimeStore | None = None):
        self.kube = kube
        self.settings = settings
        self.metrics = metrics or OperatorMetrics()
        self.writes = writes if writes is not None else OwnWrites()
        self.runtimes = runtimes if runtimes is not None else RuntimeStore()
        self.configs = ConfigCache()
        self._config_maps: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = {}
        self._ray_clusters: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = {}
        # the operator's own child writes that the watch caches may not show yet: (ns, job) -> (kind, name) ->
        # (what, when, value); see expect()
        self._expected: dict[tuple[str, str], dict[tuple[str, str], tuple[str, float, Any]]] = {}
        self._scraped: dict[tuple[str, str], float] = {}
        self._forgotten: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._instance = socket.gethostname()

    # ---- reading

    def load_config(self, job: dict[str, Any], spec: JobSpec) -> tuple[ConfigResult | None, Waiting | None]:
        """The job's config from spec.config or spec.configFrom, validated; or what it waits for (a
        configFrom ConfigMap, or its key, that does not exist yet)."""
        meta = job["metadata"]
        body = job.get("spec") or {}
        source = body.get("configFrom") or {}
        if "config" in body and body["config"] is not None:
            data = body["config"]
        elif source.get("configMapKeyRef"):
            ref = source["configMapKeyRef"]
            key = ref.get("key") or "config.yaml"
            cm = self.config_map(meta["namespace"], ref["name"])
            if cm is None:
                return None, Waiting(st.WAITING_FOR_CONFIG_MAP, f"waiting for ConfigMap {ref['name']} "
                                     "(spec.configFrom.configMapKeyRef.name) to exist in the namespace")
            if key not in (cm.get("data") or {}):
                return None, Waiting(st.WAITING_FOR_CONFIG_MAP, f"waiting for key {key} "
                                     f"(spec.configFrom.configMapKeyRef.key) in ConfigMap {ref['name']}")
            where = f"ConfigMap {ref['name']} key {key}"
            data, error = parse_config_text(cm["data"][key], where)
            if error:
                return ConfigResult(issues=[error], source=cm["data"][key]), None
        else:
            return ConfigResult(issues=["set spec.config or spec.configFrom.configMapKeyRef"]), None
        return self.configs.prepare(data, spec, job_name=meta["name"], namespace=meta["namespace"]), None

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

    def ray_cluster(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A RayCluster (the user's: not watched), read again once the last read is older than the refresh."""
        now = time.monotonic()
        with self._lock:
            cached = self._ray_clusters.get((namespace, name))
        if cached is not None and now - cached[0] < self.settings.ray_cluster_refresh_seconds:
            return cached[1]
        body = self.kube.get(k.RAYCLUSTERS, namespace, name)
        if body is not None:
            body = {"spec": {"suspend": (body.get("spec") or {}).get("suspend")}, "status": body.get("status") or {}}
        with self._lock:
            self._ray_clusters[(namespace, name)] = (now, body)
        return body

    def ray_cluster_wait(self, job: dict[str, Any], spec: JobSpec) -> tuple[Waiting | None, JobSpec]:
        """Whether the RayCluster the job joins is ready (and the spec with its head Service's name)."""
        namespace, name = job["metadata"]["namespace"], spec.ray_cluster
        assert name
        try:
            body = self.ray_cluster(namespace, name)
        except k.KubeError as exc:
            if exc.status != 404 and exc.status != 403:
                raise
            # 404 on the resource itself: KubeRay's CRD is not installed
            return Waiting(st.WAITING_FOR_RAY_CLUSTER, f"cannot read RayCluster {name}: {exc} (is KubeRay "
                           "installed, and may the operator get rayclusters.ray.io?)"), spec
        if body is None:
            return Waiting(st.WAITING_FOR_RAY_CLUSTER, f"waiting for RayCluster {name} (spec.rayClusterRef.name) "
                           "to exist in the namespace"), spec
        ok, why = raycluster.ready(body)
        if not ok:
            return Waiting(st.WAITING_FOR_RAY_CLUSTER, f"waiting for RayCluster {name} to be ready: {why}"), spec
        return None, dataclasses.replace(spec, ray_cluster_service=ray_cluster_service(spec, body["status"]))

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
            job["metadata"].setdefault("namespace", namespace)
            if LEGACY_FINALIZER in (job["metadata"].get("finalizers") or []):
                self.release_legacy_finalizer(job)
            if job.get("metadata", {}).get("deletionTimestamp"):
                return None
            observed = self.with_own_writes(namespace, name, observed)
            now = time.time() if now is None else now
            body = job.get("spec") or {}
            runtime, missing = select(body, self.runtimes)
            spec = parse_spec(body, self.settings.default_image, self.settings.default_verl_image, runtime=runtime)
            held = Waiting(st.WAITING_FOR_RUNTIME, missing) if missing else None
            config, config_wait = self.load_config(job, spec)
            held = held or config_wait
            waiting = None
            if spec.ray_cluster and config is not None and config.valid and self.needs_ray_cluster(job, spec, config,
                                                                                                    observed):
                waiting, spec = self.ray_cluster_wait(job, spec)
            progress = self.progress(job, spec, observed, now) if config is not None and config.valid else None
            plan = plan_job(job, spec, config, observed, now=now, stall_after=self.settings.stall_after_seconds,
                            progress=progress, held=held, waiting=waiting)
            if held is not None and held.reason == st.WAITING_FOR_CONFIG_MAP:
                plan.wake_in(self.settings.config_from_refresh_seconds)
            if waiting is not None:
                plan.wake_in(self.settings.ray_cluster_refresh_seconds)
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

    @staticmethod
    def needs_ray_cluster(job: dict[str, Any], spec: JobSpec, config: ConfigResult, observed: Observed) -> bool:
        """Whether the job may be about to create its pod: no pod of it runs or waits, and it has not ended
        with this spec. Only then is the RayCluster read (a running job costs no reads)."""
        if any(st.pod_phase(p) in ("Pending", "Running") and not (p.get("metadata") or {}).get("deletionTimestamp")
               for p in observed.pods):
            return False
        old = job.get("status") or {}
        return not (old.get("phase") in st.TERMINAL and old.get("specHash") == spec_hash(spec, config))

    def release_legacy_finalizer(self, job: dict[str, Any]) -> None:
        """Remove the finalizer an earlier release's kopf daemons put on the job (guarded by a test op, so a
        concurrent change of the list makes the patch fail instead of removing another finalizer)."""
        meta = job["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        at = finalizers.index(LEGACY_FINALIZER)
        ops = [{"op": "test", "path": f"/metadata/finalizers/{at}", "value": LEGACY_FINALIZER},
               {"op": "remove", "path": f"/metadata/finalizers/{at}"}]
        try:
            self.kube.patch(k.RFTJOBS, meta["namespace"], meta["name"], ops, patch_type="json")
        except k.KubeError as exc:
            if exc.status not in (404, 409, 422):
                raise
            return  # gone, or changed meanwhile: the next pass sees the job as it is now
        meta["finalizers"] = [f for f in finalizers if f != LEGACY_FINALIZER]
        log.info("removed the finalizer %s of an earlier release from %s/%s", LEGACY_FINALIZER, meta["namespace"],
                 meta["name"])

    def apply(self, job: dict[str, Any], plan: Plan, now: float) -> None:
        """The plan's writes, then its events. With deletes the status goes first (a retry is counted before
        its pods go); otherwise last, as it already says what the creates make (one write less per job)."""
        meta = job["metadata"]
        ns, name = meta["namespace"], meta["name"]
        status_first = bool(plan.delete)
        if status_first:
            self.write_status(job, plan.status)
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
            # what the watch's index will hold of it, packed: a burst of jobs keeps hundreds of these for seconds
            self.expect(ns, name, kind, body["metadata"]["name"], "present", pack(trim_child(kind, body)))
            if created and kind == "pods":
                log.info("created pod %s/%s (spec %s)", ns, body["metadata"]["name"],
                         body["metadata"]["labels"][HASH_ANNOTATION])
        for kind, child, body in plan.patch:
            self.kube.patch(RESOURCES[kind], ns, child, body)
            if "data" in body:
                self.expect(ns, name, kind, child, "data", data_digest(body))
        if not status_first:
            self.write_status(job, plan.status)
        for etype, reason, message in plan.events:
            self.post_event(job, etype, reason, message, now)

    def write_status(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        """Patch the job's status subresource to `status` (nothing when it says that already)."""
        meta = job["metadata"]
        ns, name = meta["namespace"], meta["name"]
        patch = status_patch(job.get("status") or {}, status)
        if patch:
            answer = self.kube.patch(k.RFTJOBS, ns, name, {"status": patch}, subresource="status")
            if not (isinstance(answer, dict) and answer.get("metadata")):
                answer = {**job, "status": status}  # a server that answers without the object
            self.writes.wrote(ns, name, answer, before=meta.get("resourceVersion"))

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
        # what the job's status is on the server now: a status-first plan (one with deletes) wrote its own
        before = old if plan.delete else dict(job.get("status") or {})
        self.write_status({**job, "status": before}, new)
        plan.status = new
        for etype, reason, text in st.transition_events(before, new):
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
                    items.append(unpack(value))
                else:
                    settled.append((kind, child))
            elif what == "gone":
                if current is None or (current.get("metadata") or {}).get("deletionTimestamp"):
                    settled.append((kind, child))
                else:
                    meta = {**current["metadata"], "deletionTimestamp": st.timestamp(time.time())}
                    items[index] = {**current, "metadata": meta}
            elif what == "data" and current is not None:
                if data_digest(current) == value:
                    settled.append((kind, child))
                else:
                    items[index] = {"metadata": current["metadata"], "dataDigest": value}
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
