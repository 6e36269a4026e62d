"""Pure builders: an RFTJob and its validated config -> the children it should have.

Nothing here calls the API; `reconcile` compares these with what exists.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from rft_operator import podtemplate
from rft_operator.jobconfig import ConfigResult
from rft_operator.kube import GROUP, KIND, VERSION
from rft_operator.podhash import user_digest
from rft_operator.spec import (
    API_KEY_ENV,
    CONFIG_DIR,
    CONFIG_FILE,
    KUEUE_PRIORITY,
    KUEUE_QUEUE,
    MOUNT_ROOT,
    JobSpec,
)

JOB_LABEL = "rft.dev/job"
ROLE_LABEL = "rft.dev/role"
ATTEMPT_LABEL = "rft.dev/attempt"
HASH_ANNOTATION = "rft.dev/spec-hash"
MANAGED_BY = "rft-operator"
RAY_GCS_PORT = 6379
RAY_DASHBOARD_PORT = 8265
RAY_ADDRESS_ENV = "RAY_ADDRESS"
CONTAINER = "rft"
# A fixed non-root identity: the runtime image runs as this user, and fsGroup lets it write the claim.
RUN_AS = 1000
# Kueue's plain-pod protocol (kueue.sigs.k8s.io/docs/tasks/run/plain_pods): the queue label on the RFTJob (or
# its runtime's queue) is put on its pods, which form one pod group that Kueue admits (ungates) all at once.
KUEUE_GROUP = "kueue.x-k8s.io/pod-group-name"
KUEUE_TOTAL = "kueue.x-k8s.io/pod-group-total-count"
KUEUE_RETRIABLE = "kueue.x-k8s.io/retriable-in-group"
# defaults of the runtime container's environment that a pod template may change (a model cache elsewhere)
OVERRIDABLE_ENV = frozenset({"HOME", "HF_HOME"})
# What the operator owns in every pod: a template may not set these (the CRD's CEL rules refuse them at apply,
# `podtemplate.conflicts` for what CEL cannot see); crdgen reads them from here.
CONFIG_VOLUME, JOB_DIR_VOLUME = "config", "job-dir"
OWNED_VOLUMES = (CONFIG_VOLUME, JOB_DIR_VOLUME)
OWNED_MOUNT_PATHS = (CONFIG_DIR, MOUNT_ROOT)
OWNED_ENV = ("RFT_JOB_NAME", "RFT_JOB_NAMESPACE", "POD_IP", "RFT_METRICS_HOST")
# KubeRay's head Service (`<cluster>-head-svc` unless its status names another) and the GCS port on it
KUBERAY_HEAD_SERVICE_SUFFIX = "-head-svc"


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
    """The headless Service in front of the Ray head of a job with a Ray cluster (see `runs_ray`)."""
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


def _env(job: dict[str, Any], spec: JobSpec, config: ConfigResult, role: str) -> list[dict[str, Any]]:
    meta = job["metadata"]
    job_name_env, namespace_env, pod_ip_env, metrics_host_env = OWNED_ENV
    env: list[dict[str, Any]] = [
        {"name": job_name_env, "value": meta["name"]},
        {"name": namespace_env, "value": meta["namespace"]},
        {"name": pod_ip_env, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        # the operator scrapes the pod's IP, so the runtime must listen beyond loopback inside the pod
        {"name": metrics_host_env, "value": "0.0.0.0"},
        {"name": "HOME", "value": "/tmp"},
        # model and dataset downloads survive pod replacement when the job directory is a claim
        {"name": "HF_HOME", "value": f"{MOUNT_ROOT}/hf-cache"},
    ]
    env += [{"name": k, "value": v} for k, v in sorted(config.pod_env.items())]
    if spec.ray_cluster:
        # the runtime joins the RayCluster this pod joins as a node (RAY_ADDRESS set means "join this cluster")
        env.append({"name": RAY_ADDRESS_ENV, "value": ray_cluster_address(spec)})
    elif multi_node_tinker(config, spec):
        # the runtime on the head joins the Ray the pod's own `ray start --head` runs (the runtime's interface:
        # RAY_ADDRESS set means "join this cluster"); on a worker it points the ray CLI (`ray status`) at the head
        env.append({"name": RAY_ADDRESS_ENV, "value": f"127.0.0.1:{RAY_GCS_PORT}" if role == "head"
                    else f"{service_name(meta['name'])}:{RAY_GCS_PORT}"})
    if spec.api_key_secret:
        # the key only ever travels as a Secret reference; its value is never read by the operator
        env.append({
            "name": API_KEY_ENV,
            "valueFrom": {"secretKeyRef": {"name": spec.api_key_secret["name"], "key": spec.api_key_secret["key"]}},
        })
    return env


def _user_env(spec: JobSpec, ours: list[dict[str, Any]]) -> list[dict[str, Any]]:
    taken = {e["name"] for e in ours}
    return [e for e in spec.env if e.get("name") not in taken]


def node_count(config: ConfigResult) -> int:
    """The job's pods: cluster.node_num, Trinity's own count of Ray nodes (0, its "detect", is one pod)."""
    return config.facts.node_num or 1


def multi_node_tinker(config: ConfigResult, spec: JobSpec | None = None) -> bool:
    """A Tinker job spread over several CPU pods: a head (trainer and driver) and Ray workers (runners).
    Not one that joins a RayCluster (spec.rayClusterRef): that cluster's nodes are its workers."""
    return config.facts.backend == "tinker" and node_count(config) > 1 and not (spec and spec.ray_cluster)


def runs_ray(config: ConfigResult, spec: JobSpec | None = None) -> bool:
    """The pods form a Ray cluster the operator starts: every veRL job, and multi-node Tinker jobs."""
    return config.facts.backend == "verl" or multi_node_tinker(config, spec)


def ray_cluster_service(spec: JobSpec, status: dict[str, Any] | None = None) -> str:
    """The head Service of the job's RayCluster: what its status names (KubeRay 1.1+), else KubeRay's
    `<cluster>-head-svc`."""
    named = ((status or {}).get("head") or {}).get("serviceName")
    return named or f"{spec.ray_cluster}{KUBERAY_HEAD_SERVICE_SUFFIX}"


def ray_cluster_address(spec: JobSpec) -> str:
    """host:port of the RayCluster's GCS, which the job's pod joins (the Service resolves in the namespace)."""
    return f"{spec.ray_cluster_service or ray_cluster_service(spec)}:{RAY_GCS_PORT}"


def pod_image(spec: JobSpec, config: ConfigResult) -> str:
    """spec.image, else the operator's default for the backend (veRL needs the GPU image with Trinity)."""
    if spec.requested_image:
        return spec.requested_image
    return spec.verl_image if config.facts.backend == "verl" else spec.image


def verl_shape(spec: JobSpec, config: ConfigResult) -> tuple[int, int]:
    """(pods, GPUs of each pod) of a veRL job: the config's shape (JobConfig.gpu_shape: 0, Trinity's
    detect, is one pod with the GPUs the job's engines and trainer need), spec.gpus.perNode overriding."""
    nodes, gpus = config.facts.gpu_shape
    return nodes, spec.gpus_per_node if spec.gpus_per_node is not None else gpus


def _resources(spec: JobSpec, config: ConfigResult) -> dict[str, Any]:
    resources = json.loads(json.dumps(spec.resources or {}))
    if config.facts.backend == "verl":
        _, gpus = verl_shape(spec, config)
        if gpus > 0:
            # extended resources are limits; the request must equal the limit when given. A string, as the
            # API server writes quantities back (typed clients refuse an integer there)
            resources.setdefault("limits", {})[spec.gpu_resource] = str(gpus)
            if "requests" in resources:
                resources["requests"][spec.gpu_resource] = str(gpus)
    elif not resources:
        resources = {"requests": {"cpu": "1", "memory": "2Gi"}}
    return resources


def _command(job: dict[str, Any], spec: JobSpec, config: ConfigResult, role: str) -> list[str]:
    run = ["rft", "run", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}", "--no-progress"]
    run += ["--metrics-port", str(spec.metrics_port)] if spec.metrics_enabled else ["--no-metrics"]
    head = f"{service_name(job['metadata']['name'])}:{RAY_GCS_PORT}"
    if config.facts.backend == "tinker":
        if spec.ray_cluster:
            # a node of the RayCluster with no CPUs of its own, so the runners (Ray actors) land on its workers;
            # a head that does not answer fails the pod, which the operator retries once the cluster is ready
            check = f"if ! command -v ray >/dev/null 2>&1; then echo {shlex.quote(NO_RAY_JOIN)} >&2; exit 2; fi; "
            return ["sh", "-c", check + f"ray start --address={ray_cluster_address(spec)} --num-cpus=0 --num-gpus=0 "
                    f"--disable-usage-stats && exec {' '.join(run)}"]
        if not multi_node_tinker(config, spec):
            return run
        # the same image runs head and workers: without ray (an image built without the runtime extra) both
        # say so and exit 2, which the operator does not retry, instead of looping on "ray: not found"
        check = f"if ! command -v ray >/dev/null 2>&1; then echo {shlex.quote(NO_RAY_TINKER)} >&2; exit 2; fi; "
        if role == "head":
            return ["sh", "-c", check + f"ray start --head --port={RAY_GCS_PORT} --num-gpus=0 "
                    f"--dashboard-host=0.0.0.0 --disable-usage-stats && exec {' '.join(run)}"]
        # as veRL workers: retry until the head answers (its Service publishes the address before it is ready)
        return ["sh", "-c", check + f"until ray start --address={head} --num-gpus=0 --disable-usage-stats "
                "--block; do sleep 5; done"]
    _, gpus = verl_shape(spec, config)
    if role == "head":
        # without Trinity, `rft run` itself says which image is needed and exits 2 (no retry), instead of
        # `ray` failing as "not found" or Ray starting for nothing
        script = (
            f"if ! command -v trinity >/dev/null 2>&1; then exec {' '.join(run)}; fi; "
            f"ray start --head --port={RAY_GCS_PORT} --num-gpus={gpus} --dashboard-host=0.0.0.0 "
            f"--disable-usage-stats && exec {' '.join(run)}"
        )
    else:
        # workers retry until the head answers: the head Service publishes the address before it is ready
        script = (
            f"if ! command -v ray >/dev/null 2>&1; then echo {shlex.quote(NO_TRINITY_WORKER)} >&2; exit 2; fi; "
            f"until ray start --address={head} --num-gpus={gpus} --disable-usage-stats --block; "
            "do sleep 5; done"
        )
    return ["sh", "-c", script]


NO_RAY_TINKER = ("rft: this image has no ray (a Tinker job with cluster.node_num > 1 runs a Ray cluster over its pods: "
                 "use an image with the runtime extra, which includes ray[default]: the operator's --default-image, "
                 "or spec.image)")
NO_RAY_JOIN = ("rft: this image has no ray (a job with spec.rayClusterRef joins that RayCluster as a Ray node: use an "
               "image with the runtime extra, which includes ray[default], of the RayCluster's Ray version)")
NO_TRINITY_WORKER = ("rft worker: this image has no ray (the veRL backend needs an image with trinity-rft and "
                     "its vllm extra: the operator's --default-verl-image, or spec.image)")


def kueue_queue(job: dict[str, Any], spec: JobSpec) -> tuple[str | None, str | None]:
    """(Kueue queue, priority class) of the job's pods: its own labels, else its runtime's, else none."""
    labels = (job.get("metadata") or {}).get("labels") or {}
    if labels.get(KUEUE_QUEUE):
        return labels[KUEUE_QUEUE], labels.get(KUEUE_PRIORITY) or None
    return spec.queue_name, spec.queue_priority if spec.queue_name else None


def _kueue(job: dict[str, Any], spec: JobSpec, config: ConfigResult, attempt: int,
           digest: str) -> tuple[dict[str, str], dict[str, str]]:
    """Labels and annotations that make the job's pods one Kueue pod group (none without a queue label)."""
    meta = job["metadata"]
    queue, priority = kueue_queue(job, spec)
    if not queue:
        return {}, {}
    labels = {KUEUE_QUEUE: queue}
    if priority:
        labels[KUEUE_PRIORITY] = priority
    # one group per attempt and spec: a retry or a spec change is a new group that queues again, and the old
    # group is unretriable so that Kueue frees its quota as soon as its pods end (the operator, not Kueue,
    # replaces failed pods). At most 50 + 1 + 5 + 1 + 6 characters, within a label value's 63.
    labels[KUEUE_GROUP] = f"{meta['name']}-{attempt}-{digest[:6]}"
    count = len(pod_roles(spec, config))
    return labels, {KUEUE_TOTAL: str(count), KUEUE_RETRIABLE: "false"}


def _base_pod(job: dict[str, Any], spec: JobSpec, config: ConfigResult, role: str, index: int,
              attempt: int, digest: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The operator's pod before any template, and what in it the operator owns (podtemplate.conflicts)."""
    job_name = job["metadata"]["name"]
    name = pod_name(job_name, role, index)
    kueue_labels, kueue_annotations = _kueue(job, spec, config, attempt, digest)
    labels = {ROLE_LABEL: role, ATTEMPT_LABEL: str(attempt), HASH_ANNOTATION: digest, **kueue_labels}
    ports = []
    if spec.metrics_enabled:
        ports.append({"name": "metrics", "containerPort": spec.metrics_port})
    if role == "worker" and config.facts.backend == "tinker":
        ports = []  # a Tinker worker runs only Ray (its runners report through the head's /metrics)
    if runs_ray(config, spec) and role == "head":
        ports += [{"name": "gcs", "containerPort": RAY_GCS_PORT},
                  {"name": "dashboard", "containerPort": RAY_DASHBOARD_PORT}]
    mounts = [{"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
              {"name": JOB_DIR_VOLUME, "mountPath": MOUNT_ROOT}]
    claim = claim_name(job, spec)
    if role == "worker" and config.facts.backend == "tinker":
        # a Tinker worker keeps nothing (checkpoints and metrics are the head's): a ReadWriteOnce claim mounted
        # on pods of several nodes would keep all but one of them from ever starting
        claim = None
    volumes: list[dict[str, Any]] = [
        {"name": CONFIG_VOLUME, "configMap": {"name": configmap_name(job_name)}},
        {"name": JOB_DIR_VOLUME, "persistentVolumeClaim": {"claimName": claim}} if claim
        else {"name": JOB_DIR_VOLUME, "emptyDir": {}},
    ]
    if runs_ray(config, spec) or spec.ray_cluster:
        # Ray's object store lives in shared memory; the container default of 64 MiB is far too small
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    ours = _env(job, spec, config, role)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": pod_image(spec, config),
        "command": _command(job, spec, config, role),
        "env": ours + _user_env(spec, ours),
        "resources": _resources(spec, config),
        "volumeMounts": mounts,
        # the last lines of the log become the termination message when the runtime fails without writing
        # one, so the RFTJob's status can say why (e.g. an image without trinity-rft)
        "terminationMessagePolicy": "FallbackToLogsOnError",
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
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(job, name, "ray-worker" if role == "worker" else "runtime", labels,
                          {HASH_ANNOTATION: digest, **kueue_annotations}),
        "spec": pod_spec,
    }
    owned = {
        "container": CONTAINER,
        "volumes": {v["name"] for v in volumes},
        "mount_paths": {m["mountPath"] for m in mounts},
        "env": {e["name"] for e in ours} - OVERRIDABLE_ENV,
        "ports": {p["name"]: p["containerPort"] for p in ports},
        "labels": set(pod["metadata"]["labels"]),
        "annotations": set(pod["metadata"]["annotations"]),
        "gpu": spec.gpu_resource if config.facts.backend == "verl" else None,
    }
    return pod, owned


def _templates(spec: JobSpec, role: str) -> list[tuple[str, dict[str, Any] | None]]:
    """The templates merged onto a pod of `role`, in order (the runtime's first: the job's own win)."""
    return [(f"ClusterRFTRuntime {spec.runtime} spec.podTemplate", spec.runtime_pod_template),
            ("spec.podTemplate", spec.pod_template),
            (f"spec.roleTemplates.{role}", spec.role_templates.get(role))]


def build_pod(job: dict[str, Any], spec: JobSpec, config: ConfigResult, role: str, index: int,
              attempt: int, digest: str) -> dict[str, Any]:
    """One runtime pod: the head (the only pod of a single-node job) or a worker, templates merged in."""
    base, _ = _base_pod(job, spec, config, role, index, attempt, digest)
    pod = base
    for _, template in _templates(spec, role):
        pod = podtemplate.apply_template(pod, template)
    if pod is base:
        return pod
    # operator-owned fields last: spec_issues refused templates that touch them, this keeps them whatever
    # a merge directive did
    pod["metadata"] = {**pod["metadata"], **{k: base["metadata"][k] for k in ("name", "namespace",
                                                                              "ownerReferences")}}
    pod["metadata"]["labels"].update(base["metadata"]["labels"])
    pod["metadata"]["annotations"].update(base["metadata"]["annotations"])
    pod["spec"]["restartPolicy"] = "Never"
    runtime = next(c for c in pod["spec"]["containers"] if c.get("name") == CONTAINER)
    ours = base["spec"]["containers"][0]
    runtime["image"], runtime["command"] = ours["image"], ours["command"]
    runtime.pop("args", None)
    return pod


def pod_roles(spec: JobSpec, config: ConfigResult) -> list[tuple[str, int]]:
    """(role, index) of every pod: the head, and cluster.node_num - 1 workers (both backends); the head
    alone when the job joins a RayCluster."""
    if spec.ray_cluster and config.facts.backend == "tinker":
        return [("head", 0)]
    nodes = verl_shape(spec, config)[0] if config.facts.backend == "verl" else node_count(config)
    return [("head", 0)] + [("worker", i) for i in range(1, nodes)]


def spec_issues(job: dict[str, Any], spec: JobSpec, config: ConfigResult) -> list[str]:
    """Why the spec cannot make working pods (empty: it can), each naming the field and what to do."""
    issues: list[str] = []
    if config.facts.backend == "verl":
        asked, configured = spec.gpus_per_node, config.facts.gpu_per_node
        if asked is not None and configured and asked != configured:
            issues.append(f"spec.gpus.perNode {asked} differs from spec.config cluster.gpu_per_node {configured}; "
                          "set one of them (Trinity places work by the config's count)")
        elif verl_shape(spec, config)[1] < 1:
            issues.append("spec.gpus.perNode: a veRL job's pods must request at least one GPU; set spec.gpus.perNode "
                          "to 1 or more, or leave it out (cluster.gpu_per_node, or what the job's engines need)")
        if spec.ray_cluster:
            issues.append("spec.rayClusterRef applies to Tinker jobs only (a veRL job's pods are its Ray cluster, "
                          "placed with their GPUs); remove it")
    elif spec.raw.get("gpus"):
        # the job's own spec.gpus only: a runtime's GPU resource name is for the veRL jobs that use it
        issues.append("spec.gpus applies to veRL jobs only (a Tinker job trains through the Tinker API); "
                      "remove it")
    if any(e.get("name") == RAY_ADDRESS_ENV for e in spec.env):
        if spec.ray_cluster:
            issues.append(f"spec.env {RAY_ADDRESS_ENV}: the job joins the RayCluster spec.rayClusterRef names, which "
                          f"sets {RAY_ADDRESS_ENV}; remove it from spec.env")
        elif multi_node_tinker(config, spec):
            issues.append(f"spec.env {RAY_ADDRESS_ENV}: a job with cluster.node_num > 1 runs its own Ray cluster "
                          "over its pods; remove it, or set cluster.node_num to 1 to join the Ray cluster it names "
                          "from one pod")
    roles = pod_roles(spec, config)
    if "worker" in spec.role_templates and not any(role == "worker" for role, _ in roles):
        why = ("a job with spec.rayClusterRef runs one pod, the head: the RayCluster's own pods are its workers"
               if spec.ray_cluster else "a job with spec.config cluster.node_num 0 or 1 runs one pod, the head")
        issues.append(f"spec.roleTemplates.worker: this job has no worker pods ({why}); set cluster.node_num to "
                      "the number of pods, or move the template to spec.podTemplate or spec.roleTemplates.head")
    checked: set[str] = set()
    for role, index in roles:
        if role in checked:
            continue
        checked.add(role)
        _, owned = _base_pod(job, spec, config, role, index, 0, "0" * 12)
        for where, template in _templates(spec, role):
            issues += [i for i in podtemplate.conflicts(template, owned, where) if i not in issues]
    return issues


def build_pods(job: dict[str, Any], spec: JobSpec, config: ConfigResult, attempt: int) -> list[dict[str, Any]]:
    """cluster.node_num pods (a Ray head and workers; one pod when it is 0 or 1): with GPUs on veRL, none on
    Tinker."""
    digest = spec_hash(spec, config)
    return [build_pod(job, spec, config, role, index, attempt, digest) for role, index in pod_roles(spec, config)]


def desired_children(job: dict[str, Any], spec: JobSpec, config: ConfigResult, *, attempt: int,
                     with_pods: bool) -> dict[str, list[dict[str, Any]]]:
    """Every child the job should have now, by kind (pods only while the job is meant to run)."""
    out: dict[str, list[dict[str, Any]]] = {"configmaps": [build_configmap(job, config)], "services": [],
                                             "persistentvolumeclaims": [], "pods": []}
    claim = build_claim(job, spec)
    if claim:
        out["persistentvolumeclaims"].append(claim)
    if runs_ray(config, spec):
        out["services"].append(build_service(job, spec))
    if with_pods:
        out["pods"] = build_pods(job, spec, config, attempt)
    return out
