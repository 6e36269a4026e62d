"""The RFTJob's spec as typed values with the defaults the CRD documents (pure: no API calls)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rft_operator.runtimes import Runtime, effective_spec

DEFAULT_IMAGE = "ghcr.io/rft-platform/rft-runtime:0.1.0"
# The GPU image (CUDA, trinity-rft with its vllm extra, Ray): what veRL jobs without spec.image run.
DEFAULT_VERL_IMAGE = DEFAULT_IMAGE + "-verl"
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
ROLES = ("head", "worker")
DEFAULT_METRICS_PORT = 9400
DEFAULT_BACKOFF_LIMIT = 3
MOUNT_ROOT = "/var/lib/rft"
CHECKPOINT_ROOT = MOUNT_ROOT + "/checkpoints"
CONFIG_DIR = "/etc/rft"
CONFIG_FILE = "config.yaml"
API_KEY_ENV = "TINKER_API_KEY"


@dataclass(frozen=True)
class Storage:
    """Where the job directory lives: an existing claim, a claim the operator owns, or an emptyDir."""

    existing_claim: str | None = None
    size: str | None = None
    storage_class: str | None = None
    access_modes: tuple[str, ...] = ("ReadWriteOnce",)

    @property
    def owned(self) -> bool:
        """True when the operator creates the claim (and garbage collection removes it with the job)."""
        return self.existing_claim is None and self.size is not None


@dataclass(frozen=True)
class JobSpec:
    """Everything in `spec` except the config itself, with defaults filled."""

    image: str = DEFAULT_IMAGE
    image_pull_policy: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    env: list[dict[str, Any]] = field(default_factory=list)
    env_from: list[dict[str, Any]] = field(default_factory=list)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    service_account_name: str | None = None
    api_key_secret: dict[str, str] | None = None
    storage: Storage = field(default_factory=Storage)
    suspend: bool = False
    backoff_limit: int = DEFAULT_BACKOFF_LIMIT
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = None
    metrics_port: int = DEFAULT_METRICS_PORT
    metrics_enabled: bool = True
    progress_deadline_seconds: int | None = None
    # spec.image as written (None: the operator's default for the backend); `image` above is resolved
    requested_image: str | None = None
    verl_image: str = DEFAULT_VERL_IMAGE
    # merged onto every pod, then per role (head, worker); see rft_operator.podtemplate
    pod_template: dict[str, Any] | None = None
    role_templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    # spec.gpus: the extended resource veRL pods request, and how many (None: cluster.gpu_per_node)
    gpu_resource: str = DEFAULT_GPU_RESOURCE
    gpus_per_node: int | None = None
    # the ClusterRFTRuntime applied (None: none), and its pod template, merged before the job's own
    runtime: str | None = None
    runtime_pod_template: dict[str, Any] | None = None
    # Kueue: the runtime's queue and priority class (the job's own labels win: builders.kueue_queue)
    queue_name: str | None = None
    queue_priority: str | None = None
    # spec.rayClusterRef.name: a KubeRay RayCluster in the job's namespace that runs the workflow runners
    ray_cluster: str | None = None
    # its head Service, as the RayCluster's status names it (set by the controller once it has read it)
    ray_cluster_service: str | None = None
    # the spec as the user wrote it: what the pods' digest covers (podhash), never the defaults filled above
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY = "kueue.x-k8s.io/priority-class"


def parse_spec(spec: dict[str, Any], default_image: str = DEFAULT_IMAGE,
               default_verl_image: str | None = None, runtime: Runtime | None = None) -> JobSpec:
    """The typed spec, the runtime's values under the job's own (`runtimes.effective_spec`); values the CRD
    schema already bounds are taken as given."""
    raw = spec
    rt = runtime.spec if runtime else {}
    spec = effective_spec(spec, runtime)
    kueue = rt.get("kueue") or {}
    storage_in = spec.get("storage") or {}
    storage = Storage(
        existing_claim=storage_in.get("existingClaim") or None,
        size=storage_in.get("size") or None,
        storage_class=storage_in.get("storageClassName") or None,
        access_modes=tuple(storage_in.get("accessModes") or ("ReadWriteOnce",)),
    )
    tinker = spec.get("tinker") or {}
    secret_ref = tinker.get("apiKeySecretRef") or None
    if secret_ref:
        secret_ref = {"name": secret_ref["name"], "key": secret_ref.get("key") or "api-key"}
    metrics = spec.get("metrics") or {}
    backoff = spec.get("backoffLimit")
    gpus = spec.get("gpus") or {}
    roles = spec.get("roleTemplates") or {}
    return JobSpec(
        image=spec.get("image") or rt.get("image") or default_image,
        image_pull_policy=spec.get("imagePullPolicy"),
        resources=dict(spec.get("resources") or {}),
        env=list(spec.get("env") or []),
        env_from=list(spec.get("envFrom") or []),
        node_selector=dict(spec.get("nodeSelector") or {}),
        tolerations=list(spec.get("tolerations") or []),
        affinity=spec.get("affinity") or None,
        priority_class_name=spec.get("priorityClassName"),
        service_account_name=spec.get("serviceAccountName"),
        api_key_secret=secret_ref,
        storage=storage,
        suspend=bool(spec.get("suspend", False)),
        backoff_limit=DEFAULT_BACKOFF_LIMIT if backoff is None else int(backoff),
        active_deadline_seconds=spec.get("activeDeadlineSeconds"),
        ttl_seconds_after_finished=spec.get("ttlSecondsAfterFinished"),
        metrics_port=int(metrics.get("port") or DEFAULT_METRICS_PORT),
        metrics_enabled=bool(metrics.get("enabled", True)),
        progress_deadline_seconds=spec.get("progressDeadlineSeconds"),
        requested_image=spec.get("image") or None,
        verl_image=rt.get("verlImage") or default_verl_image or DEFAULT_VERL_IMAGE,
        pod_template=spec.get("podTemplate") or None,
        role_templates={role: roles[role] for role in ROLES if roles.get(role)},
        gpu_resource=gpus.get("resourceName") or (rt.get("gpus") or {}).get("resourceName") or DEFAULT_GPU_RESOURCE,
        gpus_per_node=gpus.get("perNode"),
        runtime=runtime.name if runtime else None,
        runtime_pod_template=rt.get("podTemplate") or None,
        queue_name=kueue.get("queueName") or None,
        queue_priority=kueue.get("priorityClass") or None,
        ray_cluster=(spec.get("rayClusterRef") or {}).get("name") or None,
        raw=dict(raw),
    )
