"""What each config field does on the Tinker backend: honoured, no effect, or refused (with the reason).

A veRL job hands the whole file to `trinity run`, so there every field does what Trinity does with it. On
Tinker this runtime runs the job itself, and Trinity-RFT 0.6's own Tinker mode (its TinkerTrainerWrapper,
TinkerModel and formatters) is the measure:
- a field it reads is *honoured*: every hand-written field of `models`, unless listed below, and the facts'
  fields in HONOURED_FROM_FACTS (config.loop_fields says what each does);
- a field that cannot change what is trained here has *no effect*: a vLLM, FSDP or Ray knob, or a setting
  Trinity's Tinker mode ignores as well (IGNORED_ON_TINKER, each with the reason). It is accepted, and
  `rft validate` lists the ones a file sets (one line per section; a line with the reason for an ignored
  setting whose value is not the one that runs anyway);
- a field Trinity's Tinker mode honours and this runtime does not (or that Trinity 0.6 no longer has) is
  *refused* when it holds a value other than the one this runtime's behaviour matches. REFUSED_ON_TINKER is
  that table: to make a feature train on Tinker, implement it and delete its row.
Keys are (Trinity dataclass, field), so one row covers a class wherever it appears (every taskset); the few
fields whose treatment depends on where the section sits (the rollout model against an auxiliary model, a
taskset's format against a training dataset's) are placed by `placed`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel

from rft_runtime.config.loop_fields import NOTES as LOOP_NOTES
from rft_runtime.config.models import FROM_FACTS, SECTIONS, Section
from rft_runtime.workflows.auxiliary import ENGINE_ONLY
from rft_runtime.workflows.auxiliary import HONOURED as AUXILIARY_HONOURED

HONOURED = "honoured"
NO_EFFECT = "no effect"
REFUSED = "refused"

# (does this value match what the runtime does?, why other values are refused / change nothing)
Rule = tuple[Callable[[Any, Any], bool], str]


def _one_of(*allowed: Any) -> Callable[[Any, Any], bool]:
    return lambda value, cfg: value in allowed


def _unset(value: Any, cfg: Any) -> bool:
    return value in (None, "", [], {}, False, 0, 0.0)


def _as_model(field: str) -> Callable[[Any, Any], bool]:
    # Trinity fills the rollout model's copy from the model section: the same value (or none) is what runs here
    return lambda value, cfg: value is None or value == getattr(cfg.model, field)


# (Trinity dataclass, field) -> rule: Trinity's Tinker mode honours these, this runtime does not
REFUSED_ON_TINKER: dict[tuple[str, str], Rule] = {
    # algorithm_type, advantage_fn, policy_loss_fn (+ args), kl_loss_fn (+ args), kl_penalty_fn,
    # entropy_loss_fn (+ args), loss_agg_mode and sample_strategy are checked by the loss plan
    # (rft_runtime.algorithms.losses.loss_plan): each is honoured or refused there with its reason.
    ("TrainerConfig", "fix_actor_microbatch_loss_scale"): (
        _one_of(False), "this runtime aggregates loss_agg_mode over the whole step (docs/algorithms.md), so "
                        "Trinity's Tinker rescaling of its per-experience sum has no counterpart"),
    # image_key is honoured (config.loop_fields says how); with the local engine, which serves text models,
    # rft_runtime.config.workflow_checks refuses the images it would send
    ("FormatConfig", "video_key"): (_unset, "Tinker's samplers take text and images, not videos"),
    # Trinity 0.6 has no such fields (older versions had): a warm-up is a stage of its own there
    ("TrainerInput", "sft_warmup_steps"): (
        _one_of(0), "Trinity 0.6 runs an SFT warm-up as a stage: write an sft stage before the RL one in `stages`"),
    ("TrainerInput", "sft_warmup_dataset"): (
        _unset, "Trinity 0.6 runs an SFT warm-up as a stage: write an sft stage before the RL one in `stages`"),
    # data pipelines, selectors and external models: rft_runtime.config.data_checks says what is refused there
}

# (Trinity dataclass, field) -> rule: no effect on Tinker, in Trinity's Tinker mode as here; a value the rule
# does not accept is accepted with a warning that gives the reason
IGNORED_ON_TINKER: dict[tuple[str, str], Rule] = {
    ("OptimizerConfig", "optimizer_type"): (
        _one_of("adam", "adamw"), "Tinker trains with Adam(W) only (Trinity's Tinker trainer sends AdamParams "
                                  "whatever it says)"),
    ("ModelConfig", "repetition_penalty"): (
        _one_of(1.0), "Tinker's sampler has no repetition penalty (Trinity's Tinker model does not send one)"),
    ("ModelConfig", "min_response_tokens"): (
        _one_of(0), "Tinker's sampler has no minimum length (Trinity's Tinker model does not send one)"),
    ("AlgorithmConfig", "enable_router_replay"): (
        _one_of(False), "Tinker's samplers return no MoE routing to replay (Trinity's Tinker trainer replays "
                        "none)"),
    ("AlgorithmConfig", "bypass_old_logprobs"): (
        _one_of(True), "the sampler's logprobs are the old logprobs of the ratio, as in Trinity's Tinker trainer"),
    ("AlgorithmConfig", "rollout_correction"): (
        _unset, "no off-policy importance correction is applied, as in Trinity's Tinker trainer"),
    ("ExperiencePipelineConfig", "inputs"): (
        _unset, "the pipeline reads the explorer's experiences only; Trinity 0.6 never opens these buffers either"),
}

# hand-written fields this runtime does not read on Tinker (the rest of the hand-written ones it honours)
NO_EFFECT_ON_TINKER = {
    ("OptimizerConfig", "clip_grad"),  # trainer.grad_clip is the clip, as in Trinity's Tinker trainer
    ("AlgorithmConfig", "kl_penalty_fn_args"),
    ("ModelConfig", "lora_configs"),  # Tinker's adapter is model.tinker's
    ("LoRAConfig", "lora_rank"), ("LoRAConfig", "lora_alpha"), ("LoRAConfig", "target_modules"),
    ("LoRAConfig", "exclude_modules"),
    # ray_address and node_num place the workflow runners on Ray (rft_runtime.workflows.ray_runners)
    ("ClusterConfig", "gpu_per_node"),
    ("TasksetConfig", "index"), ("TasksetConfig", "enable_progress_bar"), ("TasksetConfig", "is_eval"),
    ("ExperienceBufferConfig", "index"), ("ExperienceBufferConfig", "enable_progress_bar"),
    ("GenerationConfig", "n"),
    ("InferenceModelConfig", "tensor_parallel_size"), ("InferenceModelConfig", "gpu_memory_utilization"),
    ("InferenceModelConfig", "dtype"),
    ("ExplorerConfig", "name"),
    ("TrainerConfig", "name"), ("TrainerConfig", "enable_preview"), ("TrainerConfig", "save_strategy"),
    ("TrainerConfig", "trainer_config"), ("TrainerConfig", "trainer_config_path"),
    ("Config", "ray_namespace"),
}


# fields only Trinity's facts define (no hand-written model) that this runtime honours all the same
HONOURED_FROM_FACTS = {
    ("ExplorerConfig", "env_vars"),  # the workflow runners' environment (Ray actors, or this process)
    ("FormatConfig", "chosen_key"), ("FormatConfig", "rejected_key"),  # dpo's replies
} | set(LOOP_NOTES)  # synchronisation, batching, replay, modes, buffers and row columns (rft_runtime.loop)

# explorer.rollout_model (the policy's sampler): Trinity's Tinker model reads these from its own copy of
# the model section's values; here rollouts take the model section's
ROLLOUT_MODEL_REFUSED: dict[str, Rule] = {
    "model_path": (_as_model("model_path"), "the policy's sampler is model.model_path's; set it there"),
    "max_prompt_tokens": (_as_model("max_prompt_tokens"), "rollouts take model.max_prompt_tokens; set it there"),
    "max_response_tokens": (_as_model("max_response_tokens"),
                            "rollouts take model.max_response_tokens (or rollout_args.max_tokens); set it there"),
}
# the rollout model's settings of the workflows' model wrapper (rft_runtime.workflows.model)
ROLLOUT_MODEL_HONOURED = {"enable_history", "enable_openai_api", "enable_prompt_truncation"}
# a taskset's format fields Trinity's workflows do not read (rollouts take explorer.rollout_model's)
TASKSET_UNREAD = {"chat_template", "enable_thinking"}

# the places where `placed` treats a class's fields otherwise: (Trinity dataclass, one such section, label)
PLACES = (("InferenceModelConfig", "explorer.auxiliary_models[0]", "an auxiliary model's"),
          ("FormatConfig", "buffer.explorer_input.taskset.format", "a taskset's"))


def _default_of(trinity_class: str, field: str) -> Callable[[Any, Any], bool]:
    info = SECTIONS[trinity_class].model_fields[field]
    default = info.get_default(call_default_factory=True)
    return lambda value, cfg: value == default


def placed(trinity_class: str, field: str, path: str = "") -> tuple[str, Rule | None]:
    """(honoured | no effect | refused, the rule of a refused or ignored field) of a field at `path` (its
    dotted path; empty: wherever it is not placed otherwise)."""
    key = (trinity_class, field)
    if trinity_class == "InferenceModelConfig":
        if path.startswith("explorer.auxiliary_models["):
            if field in AUXILIARY_HONOURED:
                return HONOURED, None
            if field in ENGINE_ONLY:
                return NO_EFFECT, None
            # rft_runtime.workflows.auxiliary refuses any other setting of an auxiliary model
            return REFUSED, (_default_of(trinity_class, field), "an auxiliary model here is a Tinker sampler "
                                                               "(or an external endpoint) that takes only the "
                                                               "settings honoured for it")
        if field in ROLLOUT_MODEL_REFUSED:
            return REFUSED, ROLLOUT_MODEL_REFUSED[field]
        if field in ROLLOUT_MODEL_HONOURED:
            return HONOURED, None
    if trinity_class == "FormatConfig" and field in TASKSET_UNREAD and path.startswith("buffer.explorer_input."):
        return NO_EFFECT, None
    if key in REFUSED_ON_TINKER:
        return REFUSED, REFUSED_ON_TINKER[key]
    if key in IGNORED_ON_TINKER:
        return NO_EFFECT, IGNORED_ON_TINKER[key]
    if key in HONOURED_FROM_FACTS:
        return HONOURED, None
    if key in NO_EFFECT_ON_TINKER or key in FROM_FACTS:
        return NO_EFFECT, None
    return HONOURED, None


def treatment(trinity_class: str, field: str, path: str = "") -> str:
    """honoured, no effect or refused (refused: for values other than the one the runtime matches) of a field
    at `path` (see `placed`)."""
    return placed(trinity_class, field, path)[0]


def set_fields(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, str, str, Any]]:
    """(dotted path, Trinity class, field, value) of every field the user's data set, at any depth."""
    owner = getattr(type(model), "trinity_name", None) or type(model).__name__
    for name in sorted(model.model_fields_set, key=list(type(model).model_fields).index):
        value = getattr(model, name)
        path = f"{prefix}{name}"
        yield path, owner, name, value
        if isinstance(value, Section):
            yield from set_fields(value, f"{path}.")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, Section):
                    yield from set_fields(item, f"{path}[{i}].")
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, Section):
                    yield from set_fields(item, f"{path}.{key}.")
