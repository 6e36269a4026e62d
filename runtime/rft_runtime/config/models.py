"""The job config: Trinity-RFT's field names and defaults, as pydantic models.

These models are the only definition of the config. The runtime validates with them, the operator validates
`spec.config` with them before it creates anything, and the CRD's schema for `spec.config` is generated from
them. Every section forbids unknown keys, so a typo is an error (with a suggestion) rather than a silently
ignored setting. Cross-field rules (which algorithm a backend can run, token budgets, ...) live in
`rft_runtime.config.checks`, so that all problems of a file can be reported together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

Mode = Literal["both", "explore", "train", "bench", "serve", "colocate"]
MonitorType = Literal["tensorboard", "wandb", "mlflow", "swanlab", "none"]
SyncMethod = Literal["nccl", "checkpoint", "memory"]
SyncStyle = Literal["fixed", "trainer_driven", "explorer_driven", "fully_async"]
StorageType = Literal["file", "queue", "sql"]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


# ---------------------------------------------------------------- algorithm


class OptimizerConfig(Section):
    """AdamW settings; on Tinker they become the `AdamParams` of every `optim_step`."""

    lr: float = Field(1e-6, gt=0, description="Peak learning rate.")
    lr_warmup_steps: int = Field(-1, ge=-1, description="Linear warm-up steps; -1 uses lr_warmup_steps_ratio.")
    lr_warmup_steps_ratio: float = Field(0.0, ge=0, le=1, description="Warm-up as a fraction of total steps.")
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="Cosine schedule floor, as a fraction of lr.")
    lr_scheduler_type: Literal["constant", "cosine"] = Field("constant", description="Learning-rate schedule.")
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2,
                               description="Adam beta1 and beta2, each in [0, 1).")
    eps: float = Field(1e-8, gt=0, description="Adam epsilon.")
    weight_decay: float = Field(0.01, ge=0, description="Decoupled weight decay.")
    clip_grad: float = Field(1.0, ge=0, description="Trinity's optimizer-level clip; trainer.grad_clip wins.")
    optimizer_type: str = Field("adam", description="Only adam is available on Tinker.")


class AlgorithmConfig(Section):
    """Which RL algorithm, and the arguments of each of its parts."""

    algorithm_type: str = Field("ppo", description="grpo, opmd, sft, rloo, reinforceplusplus, ppo, ...")
    repeat_times: int = Field(1, ge=1, description="Rollouts per task (the group size).")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    sample_strategy: str | None = Field(None, description="How experiences are drawn (veRL).")
    sample_strategy_args: dict[str, Any] | None = None
    advantage_fn: str | None = None
    advantage_fn_args: dict[str, Any] | None = Field(None, description="e.g. epsilon (grpo), tau (opmd).")
    policy_loss_fn: str | None = None
    policy_loss_fn_args: dict[str, Any] | None = Field(
        None, description="clip_range, or clip_range_low / clip_range_high, of the PPO-clip objective."
    )
    kl_loss_fn: str | None = None
    kl_loss_fn_args: dict[str, Any] | None = Field(None, description="kl_coef > 0 adds a KL term.")
    kl_penalty_fn: str | None = None
    kl_penalty_fn_args: dict[str, Any] | None = None
    entropy_loss_fn: str | None = None
    entropy_loss_fn_args: dict[str, Any] | None = None
    loss_agg_mode: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = (
        "token-mean"
    )

    @property
    def kl_coef(self) -> float:
        """The KL coefficient (0 when no KL term is configured)."""
        return float((self.kl_loss_fn_args or {}).get("kl_coef", 0.0) or 0.0)


# ---------------------------------------------------------------- model


class TinkerConfig(Section):
    """Train behind the Tinker API: the pods need no GPU."""

    enable: bool = Field(False, description="Use the Tinker backend (the job needs no GPU).")
    base_model: str | None = Field(None, description="Model Tinker trains; null means model.model_path.")
    rank: int = Field(32, ge=1, description="LoRA rank of the adapter Tinker trains.")
    seed: int | None = Field(None, description="Seed of the adapter's initial weights.")
    train_mlp: bool = Field(True, description="Put LoRA on the MLP projections.")
    train_attn: bool = Field(True, description="Put LoRA on the attention projections.")
    train_unembed: bool = Field(True, description="Put LoRA on the output (unembedding) layer.")
    base_url: str | None = Field(
        None, description="null: the Tinker service; 'local': start the local engine; or an http(s) URL."
    )


class LoraConfig(Section):
    """One LoRA adapter for the veRL backend (ignored with Tinker, which has its own rank)."""

    name: str | None = None
    path: str | None = None
    base_model_name: str | None = None
    lora_rank: int = Field(32, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dtype: str = "auto"
    target_modules: str | list[str] = "all-linear"
    exclude_modules: str | list[str] | None = None
    is_dummy: bool = False


class ModelConfig(Section):
    """The policy model and how it is prompted and sampled."""

    model_path: str | None = Field(None, description="Hub name or local directory of the policy model.")
    critic_model_path: str | None = None
    custom_chat_template: str | None = Field(None, description="Jinja chat template; overrides the tokenizer's.")
    chat_template_path: str | None = Field(None, description="File holding a Jinja chat template.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature of rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(-1, ge=-1, description="Top-k sampling; -1 disables it.")
    min_response_tokens: int = Field(0, ge=0)
    max_model_len: int | None = Field(None, ge=1, description="Context limit; default prompt + response.")
    max_prompt_tokens: int | None = Field(None, ge=1, description="Longer prompts become reward-0 rollouts.")
    max_response_tokens: int | None = Field(None, ge=1, description="Generation budget per rollout.")
    enable_thinking: bool | None = None
    lora_configs: list[LoraConfig] | None = Field(None, description="veRL LoRA adapters; ignored with Tinker.")
    tinker: TinkerConfig = Field(default_factory=TinkerConfig)

    @property
    def tinker_base_model(self) -> str | None:
        """The model Tinker trains: tinker.base_model, else model_path."""
        return self.tinker.base_model or self.model_path


# ---------------------------------------------------------------- cluster


class ClusterConfig(Section):
    """Resources of the job (what the veRL backend asks Kubernetes for)."""

    ray_address: str = Field("auto", description="Ray cluster to join; the operator sets it for veRL pods.")
    node_num: int = Field(1, ge=1, description="Nodes (pods) of a veRL job.")
    gpu_per_node: int = Field(8, ge=0, description="GPUs per node (nvidia.com/gpu of each veRL pod).")


# ---------------------------------------------------------------- buffer


class FormatConfig(Section):
    """Which columns of a dataset row hold what."""

    prompt_type: Literal["plaintext", "messages", "chatpair"] = "plaintext"
    prompt_key: str = Field("prompt", description="Column with the prompt (the question).")
    response_key: str = Field("response", description="Column with the reference answer.")
    messages_key: str = "message"
    tools_key: str = "tools"
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"
    system_prompt_key: str | None = None
    system_prompt: str | None = Field(None, description="System prompt put before every task.")
    reply_prefix: str | None = None
    image_key: str | None = None
    video_key: str | None = None
    enable_concatenated_multi_turn: bool = False


class RolloutArgs(Section):
    """Per-taskset sampling overrides (defaults come from the model section)."""

    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    max_tokens: int | None = Field(None, ge=1)
    logprobs: int | None = None
    n: int | None = Field(None, ge=1)


class StorageConfig(Section):
    """A taskset, an eval set or the experience buffer."""

    name: str = ""
    storage_type: StorageType = "file"
    path: str | None = Field(None, description="Hub dataset name, or a local file or folder.")
    repeat_times: int | None = Field(None, ge=1)
    split: str = "train"
    subset_name: str | None = Field(None, description="Dataset configuration (load_dataset's `name`).")
    format: FormatConfig = Field(default_factory=FormatConfig)
    index: int = Field(0, ge=0)
    enable_progress_bar: bool = False
    total_epochs: int | None = Field(None, ge=1)
    total_steps: int | None = Field(None, ge=1)
    rollout_args: RolloutArgs = Field(default_factory=RolloutArgs)
    workflow_args: dict[str, Any] = Field(default_factory=dict)
    reward_fn_args: dict[str, Any] = Field(default_factory=dict)
    default_workflow_type: str | None = None
    default_reward_fn_type: str | None = None
    capacity: int = Field(10000, ge=1)
    max_read_timeout: float = Field(1800.0, gt=0)
    use_priority_queue: bool = False
    is_eval: bool = False


class ExplorerInput(Section):
    """Where the explorer's tasks come from."""

    taskset: StorageConfig = Field(default_factory=lambda: StorageConfig(name="taskset"))
    tasksets: list[StorageConfig] = Field(default_factory=list)
    eval_tasksets: list[StorageConfig] = Field(default_factory=list)
    default_workflow_type: str | None = Field(None, description="Workflow of tasks that name none.")
    default_eval_workflow_type: str | None = None
    default_reward_fn_type: str | None = Field(None, description="Reward function of tasks that name none.")
    system_prompt: str | None = None
    reply_prefix: str | None = None


class TrainerInput(Section):
    """What the trainer reads: the rollout queue, or (mode train) a dataset."""

    experience_buffer: StorageConfig = Field(
        default_factory=lambda: StorageConfig(name="experience_buffer", storage_type="queue")
    )
    sft_warmup_dataset: StorageConfig | None = None
    sft_warmup_steps: int = Field(0, ge=0)
    auxiliary_buffers: dict[str, StorageConfig] = Field(default_factory=dict)


class BufferConfig(Section):
    """Batching and the data the job reads."""

    batch_size: int = Field(1, ge=1, description="Tasks per explorer step.")
    train_batch_size: int | None = Field(None, ge=1, description="Experiences per train step; default "
                                         "batch_size x repeat_times.")
    total_epochs: int = Field(1, ge=1, description="Passes over the taskset.")
    total_steps: int | None = Field(None, ge=1, description="Stop after this many steps (overrides epochs).")
    explorer_input: ExplorerInput = Field(default_factory=ExplorerInput)
    trainer_input: TrainerInput = Field(default_factory=TrainerInput)
    max_retry_times: int = Field(3, ge=0)
    max_retry_interval: int = Field(1, ge=0)


# ---------------------------------------------------------------- explorer / trainer


class RolloutModelConfig(Section):
    """The inference engines of the explorer (vLLM with veRL; the Tinker sampler otherwise)."""

    engine_type: str = "vllm"
    engine_num: int = Field(1, ge=1, description="Inference engines; rollouts in flight = this x runners.")
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    dtype: Literal["bfloat16", "float16", "float32", "auto"] = "bfloat16"
    seed: int = Field(42, description="Sampling seed of rollouts.")
    enable_prefix_caching: bool = False
    enforce_eager: bool = False
    enable_thinking: bool = False
    enable_history: bool = False
    enable_openai_api: bool = False
    chat_template: str | None = None


class ExplorerConfig(Section):
    """The side that runs workflows and produces rollouts."""

    name: str = "explorer"
    runner_per_model: int = Field(8, ge=1, description="Concurrent workflow runners per engine.")
    max_timeout: int = Field(1800, ge=1, description="Seconds a rollout may take before it fails.")
    max_retry_times: int = Field(2, ge=0, description="Retries of a failed rollout.")
    eval_interval: int = Field(100, ge=1, description="Steps between evaluations on eval_tasksets.")
    eval_on_startup: bool = True
    rollout_model: RolloutModelConfig = Field(default_factory=RolloutModelConfig)
    auxiliary_models: list[dict[str, Any]] = Field(default_factory=list)


class TrainerConfig(Section):
    """The side that turns rollouts into weight updates."""

    name: str = "trainer"
    trainer_type: Literal["verl", "tinker"] | None = Field(
        None, description="verl or tinker; default follows model.tinker.enable."
    )
    save_interval: int = Field(0, ge=0, description="Steps between full checkpoints (0: only at the end).")
    enable_preview: bool = True
    grad_clip: float = Field(1.0, ge=0, description="Gradient norm clip (0 disables it).")
    total_steps: int | None = Field(None, ge=1, description="Stop training after this many steps.")
    max_checkpoints_to_keep: int | None = Field(None, ge=1, description="Older checkpoints are deleted.")
    save_strategy: Literal["single_thread", "single_process", "single_node", "unrestricted"] = "unrestricted"
    trainer_config: dict[str, Any] | None = Field(None, description="Raw veRL trainer settings (veRL only).")
    trainer_config_path: str | None = None


class MonitorConfig(Section):
    """Where metrics go besides the JSON-lines file and Prometheus (always on)."""

    monitor_type: MonitorType = Field("tensorboard", description="tensorboard, wandb, mlflow, swanlab or none.")
    monitor_args: dict[str, Any] | None = None
    enable_ray_timeline: bool = False


class SynchronizerConfig(Section):
    """How new weights reach the explorer."""

    sync_method: SyncMethod = Field("nccl", description="checkpoint (Tinker), nccl or memory (veRL).")
    sync_style: SyncStyle = "fixed"
    sync_interval: int = Field(1, ge=1, description="Train steps between weight syncs.")
    sync_offset: int = Field(0, ge=0, description="How many steps the explorer may run ahead of the trainer.")
    sync_timeout: int = Field(3600, ge=1, description="Seconds either side may wait for the other.")


# ---------------------------------------------------------------- the job


class JobConfig(Section):
    """A Trinity-RFT job: every section, with Trinity's defaults."""

    mode: Mode = Field("both", description="both, train, explore, bench, serve or colocate.")
    project: str = Field("Trinity-RFT", min_length=1, description="First level of the job directory.")
    group: str = Field("", description="Second level of the job directory.")
    name: str = Field("rft", min_length=1, description="The job's name: last level of the job directory.")
    checkpoint_root_dir: str = Field("./checkpoints", min_length=1, description="Relative: against the cwd.")
    continue_from_checkpoint: bool = Field(True, description="Resume from the job directory when it has state.")
    ray_namespace: str | None = Field(None, description="Ray namespace of a veRL job.")
    log_level: str | None = Field(None, description="Logging level of the runtime (DEBUG, INFO, ...).")
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig, description="The RL algorithm.")
    data_processor: dict[str, Any] = Field(default_factory=dict, description="Trinity data pipelines (veRL).")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy model, prompting, Tinker.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Nodes and GPUs (veRL).")
    buffer: BufferConfig = Field(default_factory=BufferConfig, description="Batching and datasets.")
    explorer: ExplorerConfig = Field(default_factory=ExplorerConfig, description="Rollout concurrency.")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig, description="Checkpoints, clipping.")
    monitor: MonitorConfig = Field(default_factory=MonitorConfig, description="Extra metric sinks.")
    synchronizer: SynchronizerConfig = Field(
        default_factory=SynchronizerConfig, description="How new weights reach the explorer."
    )
    stages: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Stages run in order; each holds stage_name and sections merged onto this config.",
    )

    # Set by the loader for the configs of `stages`; not a user setting.
    _stage_name: str | None = PrivateAttr(None)
    _stage_index: int | None = PrivateAttr(None)
    _warnings: list[str] = PrivateAttr(default_factory=list)
    # dotted paths of the values the loader derived (not set by the user): stages derive their own
    _derived: set[str] = PrivateAttr(default_factory=set)

    @property
    def stage_name(self) -> str | None:
        """Name of the stage this config is (None for a job without stages)."""
        return self._stage_name

    @property
    def stage_index(self) -> int | None:
        """0-based position of the stage this config is (None for a job without stages)."""
        return self._stage_index

    @property
    def warnings(self) -> list[str]:
        """Things the loader accepted but the user should know (e.g. ignored lora_configs)."""
        return list(self._warnings)

    @property
    def backend(self) -> Literal["tinker", "verl"]:
        """tinker when model.tinker.enable, else verl."""
        return "tinker" if self.model.tinker.enable else "verl"

    @property
    def job_dir(self) -> Path:
        """<checkpoint_root_dir>/<project>/<group>/<name>, absolute."""
        return Path(self.checkpoint_root_dir).absolute() / self.project / self.group / self.name

    @property
    def train_batch_size(self) -> int:
        """Experiences per train step."""
        return self.buffer.train_batch_size or self.buffer.batch_size * self.algorithm.repeat_times

    def stage_configs(self) -> list[JobConfig]:
        """One validated config per stage (just this one when there are no stages)."""
        from rft_runtime.config.loader import expand_stages

        return expand_stages(self)

    def resolved_dict(self) -> dict[str, Any]:
        """The resolved config as plain data, secrets redacted (what `rft config show` prints)."""
        from rft_runtime.config.secrets import redact

        return redact(self.model_dump(mode="json"))
