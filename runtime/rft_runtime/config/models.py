"""The job config: Trinity-RFT 0.6's schema, field names and defaults, as pydantic models.

These models are the only definition of the config. The runtime validates with them, the operator validates
`spec.config` with them before it creates anything, and the CRD's schema for `spec.config` is generated from
them. Every section forbids unknown keys, so a typo is an error (with a suggestion) rather than a silently
ignored setting. Cross-field rules (which algorithm a backend can run, token budgets, ...) live in
`rft_runtime.config.checks`, so that all problems of a file can be reported together.

Two sources make up each section:
- the fields this runtime reads are written here by hand, with their checks and a description;
- every other field of Trinity's dataclass of the same name is added from `trinity_facts` (read from
  Trinity's source with `ast`, committed), with Trinity's type and default. Those are mostly veRL and vLLM
  knobs: a veRL job hands them to `trinity run`; on Tinker they have no effect (`support` says which of them
  would change what is trained and are refused there instead).
Hand-writing ~300 mostly untouched paths would be a copy that drifts silently; the facts table is
regenerated from a new Trinity wheel and the schema-coverage test says what changed.
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, create_model, model_validator

from rft_runtime.config import trinity_facts as facts
from rft_runtime.config.layers import stage_data
from rft_runtime.config.secrets import redact

Mode = Literal["both", "explore", "train", "bench", "serve", "colocate"]
MonitorType = Literal["tensorboard", "wandb", "mlflow", "swanlab", "none"]

# Trinity's enums are case-insensitive and know a few old names (CaseInsensitiveEnum and its aliases)
_ENUM_ALIASES = {
    "online": "nccl", "offline": "checkpoint",
    "dynamic_by_explorer": "explorer_driven", "dynamic_by_trainer": "trainer_driven",
}


def _enum_value(value: Any) -> Any:
    if isinstance(value, str):
        lowered = value.lower()
        return _ENUM_ALIASES.get(lowered, lowered)
    return value


def _enum(name: str) -> Any:
    """A Literal of one of Trinity's enums, read case-insensitively as Trinity does."""
    return Annotated[Literal[facts.ENUMS[name]], BeforeValidator(_enum_value)]  # type: ignore[valid-type]


PromptType = _enum("PromptType")
SyncMethod = _enum("SyncMethod")
SyncStyle = _enum("SyncStyle")
SaveStrategy = _enum("SaveStrategy")
StorageType = _enum("StorageType")


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)
    # the Trinity dataclass this section is (its facts fill the fields not written here)
    trinity_name: ClassVar[str | None] = None


# ---------------------------------------------------------------- Trinity's facts -> fields

# Trinity dataclass name -> the section class that models it (hand-written ones register themselves)
SECTIONS: dict[str, type[Section]] = {}
# (Trinity dataclass, field) pairs added from the facts rather than written here
FROM_FACTS: set[tuple[str, str]] = set()


def _python_type(node: ast.expr) -> Any:
    """A type for pydantic from one of Trinity's annotations (as parsed by ast)."""
    if isinstance(node, ast.Constant) and node.value is None:
        return type(None)
    if isinstance(node, ast.Name):
        simple = {"str": str, "int": int, "float": float, "bool": bool, "Any": Any,
                  "dict": dict[str, Any], "Dict": dict[str, Any], "list": list[Any], "List": list[Any]}
        if node.id in simple:
            return simple[node.id]
        if node.id in facts.ENUMS:
            return _enum(node.id)
        return section_for(node.id)
    if isinstance(node, ast.Subscript):
        head = ast.unparse(node.value)
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        inner = [_python_type(a) for a in args]
        if head == "Optional":
            return inner[0] | None
        if head in ("List", "list"):
            return list[inner[0]]  # type: ignore[valid-type]
        if head in ("Dict", "dict"):
            return dict[str, inner[-1]]  # type: ignore[valid-type]
    raise ValueError(f"unsupported Trinity annotation {ast.unparse(node)}")


def _fact_field(annotation: str, default: Any) -> tuple[Any, Any]:
    kind = _python_type(ast.parse(annotation, mode="eval").body)
    if default == facts.SECTION:
        inner = next(a for a in (getattr(kind, "__args__", None) or (kind,)) if isinstance(a, type)
                     and issubclass(a, Section))
        return kind, Field(default_factory=inner)
    if isinstance(default, (list, dict)):
        return kind, Field(default_factory=lambda d=default: copy.deepcopy(d))
    return kind, Field(default)


def section_for(trinity_name: str) -> type[Section]:
    """The section class of one of Trinity's dataclasses (generated from the facts if not written here)."""
    if trinity_name not in SECTIONS:
        fields = {name: _fact_field(ann, default) for name, ann, default in facts.CLASSES[trinity_name]}
        cls = create_model(trinity_name, __base__=Section, __module__=__name__, **fields)  # type: ignore[call-overload]
        cls.__doc__ = f"Trinity-RFT's {trinity_name}."
        cls.trinity_name = trinity_name
        FROM_FACTS.update((trinity_name, name) for name in fields)
        SECTIONS[trinity_name] = cls
    return SECTIONS[trinity_name]


def trinity(name: str):
    """Class decorator: complete a hand-written section with the rest of Trinity's dataclass `name`."""

    def complete(cls: type[Section]) -> type[Section]:
        extra = {f: _fact_field(ann, default) for f, ann, default in facts.CLASSES[name]
                 if f not in cls.model_fields}
        out = create_model(cls.__name__, __base__=cls, __module__=cls.__module__, **extra)  # type: ignore[call-overload]
        out.__doc__ = cls.__doc__
        out.trinity_name = name
        FROM_FACTS.update((name, f) for f in extra)
        SECTIONS[name] = out
        return out

    return complete


# ---------------------------------------------------------------- algorithm


@trinity("OptimizerConfig")
class OptimizerConfig(Section):
    """AdamW settings; on Tinker they become the `AdamParams` of every `optim_step`."""

    lr: float = Field(1e-6, gt=0, description="Peak learning rate.")
    lr_warmup_steps: int = Field(-1, ge=-1, description="Linear warm-up steps; -1 uses lr_warmup_steps_ratio.")
    lr_warmup_steps_ratio: float = Field(0.0, ge=0, le=1, description="Warm-up as a fraction of total steps.")
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="Cosine schedule floor, as a fraction of lr.")
    lr_scheduler_type: Literal["constant", "cosine"] = Field("constant", description="Learning-rate schedule.")
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2,
                               description="Adam beta1 and beta2, each in [0, 1).")
    eps: float = Field(1e-8, gt=0, description="Adam epsilon (this runtime's; Trinity has none).")
    weight_decay: float = Field(0.01, ge=0, description="Decoupled weight decay.")
    clip_grad: float = Field(1.0, ge=0, description="Trinity's optimizer-level clip; trainer.grad_clip wins.")
    optimizer_type: str = Field("adam", description="Only adam is available on Tinker.")

    @model_validator(mode="before")
    @classmethod
    def _warmup_style_wins(cls, data: Any) -> Any:
        # Trinity's older name of lr_scheduler_type: its validator copies it over when it is set
        if isinstance(data, dict) and data.get("warmup_style") is not None:
            style = data["warmup_style"]
            if style not in ("constant", "cosine"):
                raise ValueError(f"warmup_style {style!r} (Trinity's older name of lr_scheduler_type) is not one of: "
                                 "constant, cosine")
            data = {**data, "lr_scheduler_type": style}
        return data


@trinity("AlgorithmConfig")
class AlgorithmConfig(Section):
    """Which RL algorithm, and the arguments of each of its parts."""

    algorithm_type: str = Field("ppo", description="One of Trinity's algorithms (grpo, opmd, sft, rloo, ...).")
    repeat_times: int = Field(1, ge=1, description="Rollouts per task (the group size).")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    sample_strategy: str | None = Field(None, description="How experiences are drawn from the buffer.")
    sample_strategy_args: dict[str, Any] | None = None
    advantage_fn: str | None = Field(None, description="null: the algorithm's own.")
    advantage_fn_args: dict[str, Any] | None = Field(None, description="e.g. epsilon (grpo), tau (opmd).")
    kl_penalty_fn: str | None = None
    kl_penalty_fn_args: dict[str, Any] | None = None
    policy_loss_fn: str | None = Field(None, description="null: the algorithm's own.")
    policy_loss_fn_args: dict[str, Any] | None = Field(
        None, description="clip_range, or clip_range_low / clip_range_high, of the PPO-clip objective."
    )
    kl_loss_fn: str | None = Field(None, description="KL estimator of the KL loss term.")
    kl_loss_fn_args: dict[str, Any] | None = Field(None, description="kl_coef > 0 adds a KL term.")
    entropy_loss_fn: str | None = None
    entropy_loss_fn_args: dict[str, Any] | None = None
    loss_agg_mode: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                           "seq-mean-token-sum-norm"] | None = Field(None, description="null: token-mean.")

    @property
    def kl_coef(self) -> float:
        """The KL coefficient (0 when no KL term is configured)."""
        return float((self.kl_loss_fn_args or {}).get("kl_coef", 0.0) or 0.0)


# ---------------------------------------------------------------- model


@trinity("ExternalModelConfig")
class ExternalModelConfig(Section):
    """An OpenAI-compatible endpoint standing in for a model (its address and key come from the environment)."""

    enable: bool = Field(False, description="model.external_model: in mode bench (the only mode Trinity allows "
                                            "it in) the eval tasksets are rolled out against the endpoint "
                                            "instead of the Tinker sampler.")
    base_url_env: str = Field("OPENAI_BASE_URL", description="Environment variable holding the endpoint's "
                                                             "address (with or without a trailing /v1).")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding its API key (unset: "
                                                           "'EMPTY').")
    model_name: str | None = Field(None, description="Required: the model name sent to the endpoint.")


@trinity("TinkerConfig")
class TinkerConfig(Section):
    """Train behind the Tinker API: the pods need no GPU."""

    enable: bool = Field(False, description="Use the Tinker backend (the job needs no GPU).")
    base_model: str | None = Field(None, description="Model Tinker trains; null means model.model_path.")
    rank: int = Field(32, ge=1, description="LoRA rank of the adapter Tinker trains (the seed documents 32; "
                                            "Trinity's code says 16).")
    seed: int | None = Field(None, description="Seed of the adapter's initial weights.")
    train_mlp: bool = Field(True, description="Put LoRA on the MLP projections.")
    train_attn: bool = Field(True, description="Put LoRA on the attention projections.")
    train_unembed: bool = Field(True, description="Put LoRA on the output (unembedding) layer.")
    base_url: str | None = Field(
        None, description="null: the Tinker service; 'local': start the local engine; or an http(s) URL."
    )


@trinity("LoRAConfig")
class LoraConfig(Section):
    """One LoRA adapter for the veRL backend (ignored with Tinker, which has its own rank)."""

    lora_rank: int = Field(32, ge=1)
    lora_alpha: int = Field(32, ge=1)
    target_modules: str | list[str] = "all-linear"
    exclude_modules: str | list[str] | None = None


@trinity("ModelConfig")
class ModelConfig(Section):
    """The policy model and how it is prompted and sampled."""

    model_path: str = Field("", description="Hub name or local directory of the policy model.")
    custom_chat_template: str | None = Field(None, description="Jinja chat template; overrides the tokenizer's.")
    chat_template_path: str | None = Field(None, description="File holding a Jinja chat template.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature of rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(-1, ge=-1, description="Top-k sampling; -1 disables it.")
    min_response_tokens: int = Field(0, ge=0)
    max_model_len: int | None = Field(None, ge=1, description="Context limit; default prompt + response.")
    max_prompt_tokens: int | None = Field(None, ge=1, description="Longer prompts become reward-0 rollouts.")
    max_response_tokens: int | None = Field(None, ge=1, description="Generation budget per rollout.")
    enable_thinking: bool | None = Field(
        None, description="Passed to the chat template as enable_thinking (Qwen3-style templates switch the "
                          "thinking block with it); null: not passed. Rollouts (explorer.rollout_model's wins), "
                          "auxiliary models and SFT data take it unless they set their own.")
    lora_configs: list[LoraConfig] | None = Field(None, description="veRL LoRA adapters; ignored with Tinker.")
    tinker: TinkerConfig = Field(default_factory=TinkerConfig)
    external_model: ExternalModelConfig = Field(default_factory=ExternalModelConfig,
                                                description="An OpenAI-compatible endpoint as the policy (mode bench).")

    @property
    def tinker_base_model(self) -> str | None:
        """The model Tinker trains: tinker.base_model, else model_path."""
        return self.tinker.base_model or self.model_path or None

    @property
    def context_len(self) -> int | None:
        """The context limit: max_model_len, else max_prompt_tokens + max_response_tokens (Trinity's default)."""
        if self.max_model_len is not None:
            return self.max_model_len
        if self.max_prompt_tokens and self.max_response_tokens:
            return self.max_prompt_tokens + self.max_response_tokens
        return None


# ---------------------------------------------------------------- cluster


@trinity("ClusterConfig")
class ClusterConfig(Section):
    """Resources of the job (what the veRL backend asks Kubernetes for)."""

    ray_address: str = Field("auto", description="Ray cluster to join (RAY_ADDRESS wins); on Tinker, not "
                                                 "'auto' puts the workflow runners on it; 'auto': a local "
                                                 "`ray start` cluster, else one started in-process.")
    node_num: int = Field(0, ge=0, description="Nodes (pods) of the job; 0: as Trinity, detect (the operator "
                                               "makes one node). On Tinker, >1 runs the workflow runners "
                                               "on Ray over that many nodes (CPU pods).")
    gpu_per_node: int = Field(0, ge=0, description="GPUs per node; 0: as Trinity, detect (the operator asks "
                                                   "for the GPUs the explorer and trainer need).")


# ---------------------------------------------------------------- buffer


@trinity("FormatConfig")
class FormatConfig(Section):
    """Which columns of a dataset row hold what."""

    prompt_type: PromptType = Field(
        "messages", description="messages: the messages_key column is a conversation; plaintext: prompt_key "
                                "and response_key. Trinity reads it for SFT/DPO data only; a taskset that "
                                "does not set it is read as plaintext.")
    prompt_key: str = Field("prompt", description="Column with the prompt (the question).")
    response_key: str = Field("response", description="Column with the reference answer.")
    messages_key: str = Field("message", description="Column with the conversation (prompt_type messages).")
    system_prompt_key: str | None = Field(None, description="Column with a per-row system prompt.")
    system_prompt: str | None = Field(None, description="System prompt put before every task.")
    enable_thinking: bool | None = Field(
        None, description="An SFT dataset's (mode train): passed to the chat template, null: model.enable_thinking. "
                          "As in Trinity, a taskset's and a DPO dataset's are not read (rollouts take "
                          "explorer.rollout_model / model.enable_thinking).")


@trinity("GenerationConfig")
class RolloutArgs(Section):
    """Per-taskset sampling overrides (defaults come from the model section)."""

    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="null: model.top_k.")
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, description="Set by algorithm.repeat_times; do not set.")


@trinity("DataSelectorConfig")
class DataSelectorConfig(Section):
    """Which rows each batch reads (Trinity's data selectors, rft_runtime.data.selectors)."""

    selector_type: str | None = Field(
        "sequential", description="Not set: this runtime's default, a seeded order reshuffled each epoch. "
                                  "sequential: file order; shuffle: a new permutation each epoch (seed); random: "
                                  "a random batch each step; offline_easy2hard: by feature_keys, highest first; "
                                  "difficulty_based: tasks whose predicted pass rate is nearest "
                                  "kwargs.target_reward, learned from the pass_rate_calculator operator.")
    seed: int = Field(42, description="Seed of shuffle, random and difficulty_based.")
    feature_keys: list[str] = Field(default_factory=list, description="Columns a selector orders by "
                                                                      "(difficulty_based: exactly two pass rates "
                                                                      "of reference models).")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="difficulty_based: m, lamb, rho, "
                                                                     "adaptive_rho, target_reward, tau, do_sample.")


class StorageConfig(Section):
    """What a taskset and an experience buffer share: where the data is and how rows are read."""

    name: str = ""
    path: str | None = Field(None, description="Hub dataset name, or a local file or folder.")
    split: str = "train"
    subset_name: str | None = Field(None, description="Dataset configuration (load_dataset's `name`).")
    format: FormatConfig = Field(default_factory=FormatConfig)
    index: int = Field(0, ge=0)
    enable_progress_bar: bool | None = False
    total_epochs: int | None = Field(None, ge=1, description="null: buffer.total_epochs.")
    total_steps: int | None = Field(None, ge=1, description="null: buffer.total_steps.")


@trinity("TasksetConfig")
class TasksetConfig(StorageConfig):
    """A taskset or an eval set: the tasks the explorer turns into rollouts."""

    storage_type: StorageType = "file"
    repeat_times: int | None = Field(None, ge=1, description="null: algorithm.repeat_times (eval sets: 1).")
    rollout_args: RolloutArgs = Field(default_factory=RolloutArgs)
    workflow_args: dict[str, Any] = Field(default_factory=dict)
    reward_fn_args: dict[str, Any] = Field(default_factory=dict)
    default_workflow_type: str | None = None
    default_reward_fn_type: str | None = None
    is_eval: bool = False
    data_selector: DataSelectorConfig = Field(default_factory=DataSelectorConfig,
                                              description="Which rows each step reads (a training taskset's).")
    task_selector: DataSelectorConfig | None = Field(None, description="Trinity's older name of data_selector; "
                                                                       "wins when set.")

    @model_validator(mode="before")
    @classmethod
    def _plaintext_unless_asked(cls, data: Any) -> Any:
        # Trinity reads prompt_type for SFT/DPO data only and its workflows read a task by prompt_key: a
        # taskset's format is plaintext unless it says messages
        if isinstance(data, dict):
            fmt = data.get("format")
            if fmt is None:
                data = {**data, "format": {"prompt_type": "plaintext"}}
            elif isinstance(fmt, dict) and "prompt_type" not in fmt:
                data = {**data, "format": {**fmt, "prompt_type": "plaintext"}}
        return data


@trinity("ExperienceBufferConfig")
class ExperienceBufferConfig(StorageConfig):
    """What the trainer reads: the rollout queue, or (mode train) a dataset."""

    storage_type: StorageType = "queue"
    data_selector: DataSelectorConfig = Field(default_factory=DataSelectorConfig,
                                              description="Which rows each step reads (a dataset in mode train).")


@trinity("ExplorerInput")
class ExplorerInput(Section):
    """Where the explorer's tasks come from."""

    taskset: TasksetConfig = Field(default_factory=lambda: TasksetConfig(name="taskset"))
    tasksets: list[TasksetConfig] = Field(default_factory=list)
    eval_tasksets: list[TasksetConfig] = Field(default_factory=list)
    default_workflow_type: str | None = Field(None, description="Workflow of tasks that name none.")
    default_eval_workflow_type: str | None = None
    default_reward_fn_type: str | None = Field(None, description="Reward function of tasks that name none.")
    # older Trinity versions kept these here; still read
    system_prompt: str | None = None
    reply_prefix: str | None = None


@trinity("TrainerInput")
class TrainerInput(Section):
    """What the trainer reads: the rollout queue, or (mode train) a dataset."""

    experience_buffer: ExperienceBufferConfig = Field(
        default_factory=lambda: ExperienceBufferConfig(name="experience_buffer")
    )
    auxiliary_buffers: dict[str, ExperienceBufferConfig] = Field(default_factory=dict)
    # older Trinity versions kept these here; still read
    sft_warmup_dataset: ExperienceBufferConfig | None = None
    sft_warmup_steps: int = Field(0, ge=0)


@trinity("BufferConfig")
class BufferConfig(Section):
    """Batching and the data the job reads."""

    batch_size: int = Field(1, ge=1, description="Tasks per explorer step.")
    train_batch_size: int = Field(0, ge=0, description="Experiences per train step; 0: batch_size x "
                                                       "repeat_times.")
    total_epochs: int = Field(1, ge=1, description="Passes over the taskset.")
    total_steps: int | None = Field(None, ge=1, description="Stop after this many steps (overrides epochs).")
    explorer_input: ExplorerInput = Field(default_factory=ExplorerInput)
    trainer_input: TrainerInput = Field(default_factory=TrainerInput)


# ---------------------------------------------------------------- data pipelines


@trinity("OperatorConfig")
class OperatorConfig(Section):
    """One operator of a pipeline: its registered name and the keyword arguments it is built with."""

    name: str = Field("", description="Experience operators: reward_filter, reward_std_filter, "
                                      "dapo_dynamic_sampling, mask_response_truncated, invalid_reward_filter, "
                                      "reward_shaping_mapper, pass_rate_calculator, data_juicer; task "
                                      "pipelines: a Data-Juicer operator.")
    args: dict[str, Any] = Field(default_factory=dict, description="The operator's arguments.")


@trinity("ExperiencePipelineConfig")
class ExperiencePipelineConfig(Section):
    """What happens to each explore step's experiences before the trainer reads them."""

    operators: list[OperatorConfig] = Field(default_factory=list, description="Applied in order to every "
                                                                              "explore step's experiences.")
    save_input: bool = Field(True, description="With operators: keep the experiences that entered the "
                                               "pipeline (input_save_path).")
    input_save_path: str | None = Field(None, description="A .jsonl file or a sqlite:/// URL; null: "
                                                          "sqlite:///<job dir>/buffer/explorer_output.db.")


@trinity("TaskPipelineConfig")
class TaskPipelineConfig(Section):
    """Data-Juicer over raw task files before the job starts; its output is the taskset (needs py-data-juicer)."""

    operators: list[OperatorConfig] = Field(default_factory=list, description="Data-Juicer operators, in order.")
    num_process: int = Field(4, ge=1, description="Processes Data-Juicer uses.")
    config_path: str | None = Field(None, description="A Data-Juicer config file; when set, operators and "
                                                      "num_process are not read.")
    inputs: list[str] = Field(default_factory=list, description="Local task files (jsonl, json, parquet, csv).")
    target_fields: list[str] = Field(default_factory=list, description="Text columns the operators read.")
    priority_weights: dict[str, float] = Field(default_factory=dict, description="Weights of difficulty, "
                                                                                 "quality and usage_frequency "
                                                                                 "in each task's priority.")
    top_k: int = Field(-1, description="Keep this many tasks of highest priority; -1: all.")
    output: TasksetConfig | None = Field(None, description="Where the tasks go (its path, a folder); null: "
                                                           "buffer.explorer_input.taskset (mode train: "
                                                           "buffer.trainer_input.experience_buffer).")


@trinity("DataProcessorConfig")
class DataProcessorConfig(Section):
    """Data pipelines: tasks before the job, experiences between explorer and trainer."""

    task_pipeline: TaskPipelineConfig | None = Field(None, description="Writes <taskset path>/output.jsonl "
                                                                       "(task_pipeline.output's) before the first "
                                                                       "step.")
    experience_pipeline: ExperiencePipelineConfig = Field(default_factory=ExperiencePipelineConfig)


# ---------------------------------------------------------------- explorer / trainer


@trinity("InferenceModelConfig")
class RolloutModelConfig(Section):
    """An inference engine of the explorer (vLLM with veRL; the Tinker sampler otherwise)."""

    engine_num: int = Field(1, ge=1, description="Inference engines; rollouts in flight = this x runners.")
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    dtype: str = "bfloat16"
    seed: int = Field(42, description="Sampling seed of rollouts (and of the taskset's order).")
    enable_thinking: bool | None = Field(None, description="The chat template's enable_thinking for this "
                                                           "model's prompts; null: model.enable_thinking.")
    chat_template: str | None = Field(None, description="Jinja chat template of this model's prompts; null: "
                                                        "model.custom_chat_template, else the tokenizer's.")
    engine_type: str = Field("vllm", description="An auxiliary model's 'external': an OpenAI-compatible endpoint "
                                                 "(external_model_config) instead of a Tinker sampler of "
                                                 "model_path; other values: the Tinker sampler.")
    external_model_config: ExternalModelConfig = Field(
        default_factory=ExternalModelConfig, description="With engine_type external: the endpoint (its enable "
                                                         "is not read).")


@trinity("ExplorerConfig")
class ExplorerConfig(Section):
    """The side that runs workflows and produces rollouts."""

    name: str = "explorer"
    runner_per_model: int = Field(8, ge=1, description="Concurrent workflow runners per engine (Ray actors "
                                                       "when the explorer runs on Ray).")
    max_timeout: int = Field(1800, ge=1, description="Seconds a rollout may take before it fails.")
    max_retry_times: int = Field(2, ge=0, description="Times a workflow run is run again when it raised or "
                                                      "overran max_timeout (or its Ray runner died) before "
                                                      "it counts as a failed rollout.")
    eval_interval: int = Field(100, ge=1, description="Steps between evaluations on eval_tasksets.")
    eval_on_startup: bool = Field(True, description="Evaluate before the first step.")
    rollout_model: RolloutModelConfig = Field(default_factory=RolloutModelConfig)
    auxiliary_models: list[RolloutModelConfig] = Field(default_factory=list)


@trinity("TrainerConfig")
class TrainerConfig(Section):
    """The side that turns rollouts into weight updates."""

    name: str = "trainer"
    trainer_type: Literal["verl", "tinker"] = Field(
        "verl", description="verl or tinker; becomes tinker when model.tinker.enable."
    )
    save_interval: int = Field(0, ge=0, description="Steps between full checkpoints (0: only at the end).")
    enable_preview: bool = False
    grad_clip: float = Field(1.0, ge=0, description="Gradient norm clip (0 disables it).")
    total_steps: int | None = Field(None, ge=1, description="Stop training after this many steps.")
    max_checkpoints_to_keep: int = Field(0, ge=0, description="Older checkpoints are deleted; 0 keeps all.")
    save_strategy: SaveStrategy = "unrestricted"
    trainer_config: Any = Field(default_factory=dict, description="Raw veRL trainer settings (veRL only).")
    trainer_config_path: str = ""


@trinity("MonitorConfig")
class MonitorConfig(Section):
    """Where metrics go besides the JSON-lines file and Prometheus (always on)."""

    monitor_type: MonitorType = Field("tensorboard", description="tensorboard, wandb, mlflow, swanlab or none.")
    monitor_args: dict[str, Any] | None = None


@trinity("SynchronizerConfig")
class SynchronizerConfig(Section):
    """How new weights reach the explorer."""

    sync_method: SyncMethod = Field("nccl", description="nccl, checkpoint or memory; on Tinker checkpoint "
                                                        "or memory (nccl becomes checkpoint, as in Trinity).")
    sync_style: SyncStyle = "fixed"
    sync_interval: int = Field(1, ge=1, description="Train steps between weight syncs.")
    sync_offset: int = Field(0, ge=0, description="How many steps the explorer may run ahead of the trainer.")
    sync_timeout: int = Field(3600, ge=1, description="Seconds either side may wait for the other.")


@trinity("LogConfig")
class LogConfig(Section):
    """The runtime's logging."""

    level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")


# ---------------------------------------------------------------- the job


@trinity("Config")
class JobConfig(Section):
    """A Trinity-RFT job: every section, with Trinity's defaults."""

    mode: Mode = Field("both", description="both, train, explore, bench, serve or colocate.")
    project: str = Field("Trinity-RFT", min_length=1, description="First level of the job directory.")
    group: str = Field("", description="Second level of the job directory.")
    name: str = Field("rft", min_length=1, description="The job's name: last level of the job directory.")
    checkpoint_root_dir: str = Field("", description="Where job directories go; empty or relative: against "
                                                     "the working directory.")
    continue_from_checkpoint: bool = Field(True, description="Resume from the job directory when it has state.")
    ray_namespace: str = Field("", description="Ray namespace of a veRL job.")
    log_level: str | None = Field(None, description="Older spelling of log.level; wins when set.")
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig, description="The RL algorithm.")
    data_processor: DataProcessorConfig = Field(default_factory=DataProcessorConfig,
                                                description="Task and experience pipelines.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy model, prompting, Tinker.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Nodes and GPUs (veRL).")
    buffer: BufferConfig = Field(default_factory=BufferConfig, description="Batching and datasets.")
    explorer: ExplorerConfig = Field(default_factory=ExplorerConfig, description="Rollout concurrency.")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig, description="Checkpoints, clipping.")
    monitor: MonitorConfig = Field(default_factory=MonitorConfig, description="Extra metric sinks.")
    synchronizer: SynchronizerConfig = Field(
        default_factory=SynchronizerConfig, description="How new weights reach the explorer."
    )
    log: LogConfig = Field(default_factory=LogConfig, description="Logging.")
    stages: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Stages run in order; each holds stage_name and sections merged onto this config.",
    )

    # Set by the loader for the configs of `stages`; not a user setting.
    _stage_name: str | None = PrivateAttr(None)
    _stage_index: int | None = PrivateAttr(None)
    _warnings: list[str] = PrivateAttr(default_factory=list)
    # True when only the keys the files set were checked (a fragment such as the tinker snippet)
    _partial: bool = PrivateAttr(False)

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
    def partial(self) -> bool:
        """True when the config was checked as a fragment (only what it sets, not completeness)."""
        return self._partial

    @property
    def backend(self) -> Literal["tinker", "verl"]:
        """tinker when model.tinker.enable, else verl."""
        return "tinker" if self.model.tinker.enable else "verl"

    @property
    def sync_method(self) -> str:
        """How new weights reach the explorer: synchronizer.sync_method, except that on Tinker, which has no
        NCCL group, nccl (Trinity's default) becomes checkpoint, as Trinity does."""
        method = self.synchronizer.sync_method
        if self.backend == "tinker" and ("sync_method" not in self.synchronizer.model_fields_set or method == "nccl"):
            return "checkpoint"
        return method

    @property
    def logging_level(self) -> str:
        """The level the runtime logs at: log_level when given, else log.level."""
        return self.log_level or self.log.level

    @property
    def job_dir(self) -> Path:
        """<checkpoint_root_dir>/<project>/<group>/<name>, absolute."""
        return Path(self.checkpoint_root_dir or ".").absolute() / self.project / self.group / self.name

    @property
    def explore_batch_size(self) -> int:
        """Experiences one explorer step makes: batch_size tasks x repeat_times rollouts each."""
        return self.buffer.batch_size * self.algorithm.repeat_times

    @property
    def train_batch_size(self) -> int:
        """Experiences per train step: buffer.train_batch_size, else one explorer step's (Trinity's default)."""
        return self.buffer.train_batch_size or self.explore_batch_size

    def gpu_shape(self) -> tuple[int, int]:
        """(nodes, GPUs per node) a veRL job asks for; 0 in cluster means "what the job needs", on one node.

        Trinity detects both from the Ray cluster it joins. A pod has to ask for them up front, so the
        explorer's engines (engine_num x tensor/data/pipeline parallel size, auxiliary models too) plus one
        GPU for the trainer (modes that train) are spread over the nodes.
        """
        nodes = self.cluster.node_num or 1
        if self.cluster.gpu_per_node:
            return nodes, self.cluster.gpu_per_node
        engines = [self.explorer.rollout_model, *self.explorer.auxiliary_models]
        rollout = sum(e.engine_num * e.tensor_parallel_size * e.data_parallel_size * e.pipeline_parallel_size
                      for e in engines)
        explores = self.mode in ("both", "explore", "bench", "serve", "colocate")
        trains = self.mode in ("both", "train", "colocate")
        need = (rollout if explores else 0) + (1 if trains else 0)
        if self.mode == "colocate":
            need = max(rollout, 1)
        return nodes, max(1, -(-need // nodes))

    def stage_configs(self) -> list[JobConfig]:
        """One validated config per stage, in order (just this one when there are no stages).

        Each stage is what the user wrote for the job with the stage's sections laid over it: values that
        derive from others (see `sync_method`, `ModelConfig.context_len`) derive again from the stage's own.
        """
        if not self.stages:
            return [self]
        base = self.model_dump(mode="json")
        out = []
        for index, stage in enumerate(self.stages):
            merged = stage_data(base, stage)
            merged["stages"] = []
            stage_cfg = JobConfig.model_validate(merged)
            stage_cfg._stage_name = str(stage.get("stage_name") or f"stage{index}")
            stage_cfg._stage_index = index
            stage_cfg._warnings = self.warnings
            out.append(stage_cfg)
        return out

    def resolved_dict(self) -> dict[str, Any]:
        """The resolved config as plain data, secrets redacted (what `rft config show` prints): the values
        Trinity derives from others are shown as they are used."""
        data = self.model_dump(mode="json")
        data["model"]["max_model_len"] = self.model.context_len
        data["synchronizer"]["sync_method"] = self.sync_method
        if self.backend == "tinker":
            data["model"]["tinker"]["base_model"] = self.model.tinker_base_model
            data["trainer"]["trainer_type"] = "tinker"
        return redact(data)


# Trinity's StageConfig: what a `stages` entry may hold (this runtime also takes `model` there)
STAGE_KEYS = tuple(f for f, _, _ in facts.CLASSES["StageConfig"]) + ("model",)

# Defaults that deliberately differ from Trinity 0.6.0's (the schema-coverage test and docs read this).
DEFAULT_DIFFERENCES = {
    "model.tinker.rank": "32, as the seed document says (Trinity's code says 16)",
    "buffer.explorer_input.taskset": "an empty taskset section rather than null, so that overlays can set "
                                     "single keys of it",
    "buffer.trainer_input.experience_buffer": "an empty queue section rather than null, for the same reason",
    "TasksetConfig.total_epochs": "null: buffer.total_epochs (Trinity overwrites the 1 written here with it)",
    "TasksetConfig.repeat_times": "null: algorithm.repeat_times, eval sets 1 (Trinity overwrites it the same "
                                  "way)",
    "ExperienceBufferConfig.total_epochs": "null: buffer.total_epochs (as for tasksets)",
    "GenerationConfig.top_k": "null: model.top_k (Trinity's -1 would hide model.top_k)",
    "LoRAConfig.target_modules": "a list of module names is accepted as well as a string",
    "LoRAConfig.exclude_modules": "a list of module names is accepted as well as a string",
    "stages": "a list of mappings (stage_name plus sections) merged onto the top-level config",
    "DataSelectorConfig.selector_type": "not set: a seeded order reshuffled every epoch (Trinity's not-set means "
                                        "sequential); any value set, sequential included, is Trinity's selector",
}
