"""Pure builders: an RFTJob and its validated config -> the children it should have.

Nothing here calls the API; `reconcile` compares these with what exists.
"""

from __future__ import annotations

import json
from typing import Any

from rft_operator.jobconfig import ConfigResult
from rft_operator.kube import GROUP, KIND, VERSION
from rft_operator.podhash import user_digest
from rft_operator.spec import API_KEY_ENV, CONFIG_DIR, CONFIG_FILE, MOUNT_ROOT, JobSpec

JOB_LABEL = "rft.dev/job"
ROLE_LABEL = "rft.dev/role"
ATTEMPT_LABEL = "rft.dev/attempt"
HASH_ANNOTATION = "rft.dev/spec-hash"
MANAGED_BY = "rft-operator"
RAY_GCS_PORT = 6379
RAY_DASHBOARD_PORT = 8265
CONTAINER = "rft"
# A fixed non-root identity: the runtime image runs as this user, and fsGroup lets it write the claim.
RUN_AS = 1000


def job_labels(name: str) -> dict[str, str]:
    """The labels every child of the job carries (what the operator selects its children by)."""
    return {
        "app.kubernetes.io/name": "rft-runtime",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/part-of": "rft",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        JOB_LABEL: name,
    }


def owner_reference(job: dict[str, Any]) -> dict[str, Any]:
    """The controller reference that lets garbage collection remove children with their RFTJob."""
    meta = job["metadata"]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": meta["name"],
        "uid": meta.get("uid", ""),
        "controller": True,
    }


def _meta(job: dict[str, Any], name: str, component: str, extra_labels: dict[str, str] | None = None,
          annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta = job["metadata"]
    labels = {**job_labels(meta["name"]), "app.kubernetes.io/component": component, **(extra_labels or {})}
    out: dict[str, Any] = {
        "name": name,
        "namespace": meta["namespace"],
        "labels": labels,
        "ownerReferences": [owner_reference(job)],
    }
    if annotations:
        out["annotations"] = annotations
    return out


def configmap_name(job_name: str) -> str:
    """The ConfigMap holding the config the pods run."""
    return f"{job_name}-config"


def service_name(job_name: str) -> str:
    """The headless Service in front of a veRL job's Ray head."""
    return f"{job_name}-head"


def claim_name(job: dict[str, Any], spec: JobSpec) -> str | None:
    """The PVC of the job directory (None: an emptyDir, lost with the pod)."""
    if spec.storage.existing_claim:
        return spec.storage.existing_claim
    if spec.storage.size:
        return f"{job['metadata']['name']}-storage"
    return None


def pod_name(job_name: str, role: str, index: int = 0) -> str:
    """Stable pod names: a replacement waits for its predecessor to be gone instead of piling up."""
    return f"{job_name}-head" if role == "head" else f"{job_name}-worker-{index}"


def spec_hash(spec: JobSpec, config: ConfigResult) -> str:
    """The digest on the pods: what the user asked for, never the operator's defaults (see podhash)."""
    return user_digest(spec.raw, config.source)


def build_configmap(job: dict[str, Any], config: ConfigResult) -> dict[str, Any]:
    """The config the pods read from /etc/rft/config.yaml (the user's own, never a secret)."""
    name = configmap_name(job["metadata"]["name"])
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(job, name, "config"),
        "data": {CONFIG_FILE: config.text},
    }


def build_claim(job: dict[str, Any], spec: JobSpec) -> dict[str, Any] | None:
    """The PVC the operator owns, when spec.storage asks for a size instead of an existing claim."""
    if not spec.storage.owned:
        return None
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(job, f"{job['metadata']['name']}-storage", "storage"),
        "spec": {
            "accessModes": list(spec.storage.access_modes),
            "resources": {"requests": {"storage": spec.storage.size}},
        },
    }
    if spec.storage.storage_class:
        body["spec"]["storageClassName"] = spec.storage.storage_class
    return body


def build_service(job: dict[str, Any], spec: JobSpec) -> dict[str, Any]:
    """Headless, because a Ray cluster has exactly one head; published before readiness so workers can join."""
    job_name = job["metadata"]["name"]
    ports = [
        {"name": "gcs", "port": RAY_GCS_PORT, "targetPort": RAY_GCS_PORT},
        {"name": "dashboard", "port": RAY_DASHBOARD_PORT, "targetPort": RAY_DASHBOARD_PORT},
    ]
    if spec.metrics_enabled:
        ports.append({"name": "metrics", "port": spec.metrics_port, "targetPort": spec.metrics_port})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(job, service_name(job_name), "ray-head"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_LABEL: job_name, ROLE_LABEL: "head"},
            "ports": ports,
        },
    }


def _env(job: dict[str, Any], spec: JobSpec, config: ConfigResult) -> list[dict[str, Any]]:
    meta = job["metadata"]
    env: list[dict[str, Any]] = [
        {"name": "RFT_JOB_NAME", "value": meta["name"]},
        {"name": "RFT_JOB_NAMESPACE", "value": meta["namespace"]},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        # the operator scrapes the pod's IP, so the runtime must listen beyond loopback inside the pod
        {"name": "RFT_METRICS_HOST", "value": "0.0.0.0"},
        {"name": "HOME", "value": "/tmp"},
        # model and dataset downloads survive pod replacement when the job directory is a claim
        {"name": "HF_HOME", "value": f"{MOUNT_ROOT}/hf-cache"},
    ]
    env += [{"name": k, "value": v} for k, v in sorted(config.pod_env.items())]
    if spec.api_key_secret:
        # the key only ever travels as a Secret reference; its value is never read by the operator
        env.append({
            "name": API_KEY_ENV,
            "valueFrom": {"secretKeyRef": {"name": spec.api_key_secret["name"], "key": spec.api_key_secret["key"]}},
        })
    ours = {e["name"] for e in env}
    env += [e for e in spec.env if e.get("name") not in ours]
    return env


def _resources(spec: JobSpec, config: ConfigResult) -> dict[str, Any]:
    resources = json.loads(json.dumps(spec.resources or {}))
    if config.cfg.backend == "verl":
        gpus = int(config.cfg.cluster.gpu_per_node)
        if gpus > 0:
            # extended resources are limits; the request must equal the limit when given. A string, as the
            # API server writes quantities back (typed clients refuse an integer there)
            resources.setdefault("limits", {})["nvidia.com/gpu"] = str(gpus)
            if "requests" in resources:
                resources["requests"]["nvidia.com/gpu"] = str(gpus)
    elif not resources:
        resources = {"requests": {"cpu": "1", "memory": "2Gi"}}
    return resources


def _command(job: dict[str, Any], spec: JobSpec, config: ConfigResult, role: str) -> list[str]:
    run = ["rft", "run", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}", "--no-progress"]
    run += ["--metrics-port", str(spec.metrics_port)] if spec.metrics_enabled else ["--no-metrics"]
    if config.cfg.backend == "tinker":
        return run
    gpus = int(config.cfg.cluster.gpu_per_node)
    head = f"{service_name(job['metadata']['name'])}:{RAY_GCS_PORT}"
    if role == "head":
        script = (
            f"ray start --head --port={RAY_GCS_PORT} --num-gpus={gpus} --dashboard-host=0.0.0.0 "
            f"--disable-usage-stats && exec {' '.join(run)}"
        )
    else:
        # workers retry until the head answers: the head Service publishes the address before it is ready
        script = (
            f"until ray start --address={head} --num-gpus={gpus} --disable-usage-stats --block; "
            "do sleep 5; done"
        )
    return ["sh", "-c", script]


def build_pod(job: dict[str, Any], spec: JobSpec, config: ConfigResult, role: str, index: int,
              attempt: int, digest: str) -> dict[str, Any]:
    """One runtime pod: the head (the only pod of a Tinker job) or a veRL worker."""
    job_name = job["metadata"]["name"]
    name = pod_name(job_name, role, index)
    labels = {ROLE_LABEL: role, ATTEMPT_LABEL: str(attempt), HASH_ANNOTATION: digest}
    ports = []
    if spec.metrics_enabled:
        ports.append({"name": "metrics", "containerPort": spec.metrics_port})
    if config.cfg.backend == "verl" and role == "head":
        ports += [{"name": "gcs", "containerPort": RAY_GCS_PORT},
                  {"name": "dashboard", "containerPort": RAY_DASHBOARD_PORT}]
    mounts = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
              {"name": "job-dir", "mountPath": MOUNT_ROOT}]
    claim = claim_name(job, spec)
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": configmap_name(job_name)}},
        {"name": "job-dir", "persistentVolumeClaim": {"claimName": claim}} if claim
        else {"name": "job-dir", "emptyDir": {}},
    ]
    if config.cfg.backend == "verl":
        # Ray's object store lives in shared memory; the container default of 64 MiB is far too small
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "command": _command(job, spec, config, role),
        "env": _env(job, spec, config),
        "resources": _resources(spec, config),
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
        },
    }
    if ports:
        container["ports"] = ports
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    if spec.env_from:
        container["envFrom"] = spec.env_from
    pod_spec: dict[str, Any] = {
        # the operator decides about retries (backoffLimit), so the kubelet must not restart in place
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    for key, value in (
        ("serviceAccountName", spec.service_account_name),
        ("priorityClassName", spec.priority_class_name),
        ("nodeSelector", spec.node_selector or None),
        ("tolerations", spec.tolerations or None),
        ("affinity", spec.affinity),
    ):
        if value:
            pod_spec[key] = value
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(job, name, "ray-worker" if role == "worker" else "runtime", labels,
                          {HASH_ANNOTATION: digest}),
        "spec": pod_spec,
    }


def build_pods(job: dict[str, Any], spec: JobSpec, config: ConfigResult, attempt: int) -> list[dict[str, Any]]:
    """Tinker: one pod and no GPU. veRL: cluster.node_num pods (a Ray head and workers), each with GPUs."""
    digest = spec_hash(spec, config)
    pods = [build_pod(job, spec, config, "head", 0, attempt, digest)]
    if config.cfg.backend == "verl":
        for i in range(1, int(config.cfg.cluster.node_num)):
            pods.append(build_pod(job, spec, config, "worker", i, attempt, digest))
    return pods


def desired_children(job: dict[str, Any], spec: JobSpec, config: ConfigResult, *, attempt: int,
                     with_pods: bool) -> dict[str, list[dict[str, Any]]]:
    """Every child the job should have now, by kind (pods only while the job is meant to run)."""
    out: dict[str, list[dict[str, Any]]] = {"configmaps": [build_configmap(job, config)], "services": [],
                                             "persistentvolumeclaims": [], "pods": []}
    claim = build_claim(job, spec)
    if claim:
        out["persistentvolumeclaims"].append(claim)
    if config.cfg.backend == "verl":
        out["services"].append(build_service(job, spec))
    if with_pods:
        out["pods"] = build_pods(job, spec, config, attempt)
    return out
