"""What each config field does on the Tinker backend: honoured, no effect, or refused (with the reason).

A veRL job hands the whole file to `trinity run`, so there every field does what Trinity does with it. On
Tinker this runtime runs the job itself:
- a field it reads is *honoured*: every hand-written field of `models`, unless listed below;
- a field that cannot change what is trained here (a vLLM, FSDP or Ray knob) has *no effect*: accepted,
  and `rft validate` lists the ones a file sets, one line per section;
- a field that would change what is trained and is not implemented here is *refused* when it holds a value
  other than the one this runtime's behaviour matches. REFUSED_ON_TINKER is that table: to make a feature
  train on Tinker, implement it and delete its row.
Keys are (Trinity dataclass, field), so one row covers a class wherever it appears (every taskset).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel

from rft_runtime.config.loop_fields import NOTES as LOOP_NOTES
from rft_runtime.config.models import FROM_FACTS, Section

HONOURED = "honoured"
NO_EFFECT = "no effect"
REFUSED = "refused"

def _one_of(*allowed: Any) -> Callable[[Any, Any], bool]:
    return lambda value, cfg: value in allowed


def _unset(value: Any, cfg: Any) -> bool:
    return value in (None, "", [], {}, False, 0, 0.0)


# (Trinity dataclass, field) -> (does this value match what the runtime does?, why other values are refused)
REFUSED_ON_TINKER: dict[tuple[str, str], tuple[Callable[[Any, Any], bool], str]] = {
    # algorithm_type, advantage_fn, policy_loss_fn (+ args), kl_loss_fn (+ args), kl_penalty_fn,
    # entropy_loss_fn (+ args), loss_agg_mode and sample_strategy are checked by the loss plan
    # (rft_runtime.algorithms.losses.loss_plan): each is honoured or refused there with its reason.
    ("AlgorithmConfig", "enable_router_replay"): (_one_of(False), "MoE router replay needs the vLLM engines"),
    ("AlgorithmConfig", "bypass_old_logprobs"): (
        _one_of(True), "the sampler's logprobs are the old logprobs of the ratio"),
    ("AlgorithmConfig", "rollout_correction"): (_unset, "no off-policy importance correction is applied"),
    ("OptimizerConfig", "optimizer_type"): (_one_of("adam", "adamw"), "Tinker trains with Adam(W) only"),
    ("ModelConfig", "repetition_penalty"): (_one_of(1.0), "Tinker's sampler has no repetition penalty"),
    ("ModelConfig", "min_response_tokens"): (_one_of(0), "Tinker's sampler has no minimum length"),
    # image_key is honoured (config.loop_fields says how); with the local engine, which serves text models,
    # rft_runtime.config.workflow_checks refuses the images it would send
    ("FormatConfig", "video_key"): (_unset, "Tinker's samplers take text and images, not videos"),
    ("TasksetConfig", "storage_type"): (_one_of("file"), "tasksets are read from files or the hub"),
    ("ExplorerInput", "tasksets"): (_unset, "one taskset is trained on: put it in buffer.explorer_input.taskset"),
    ("OverRolloutConfig", "ratio"): (_one_of(0, 0.0), "every step waits for all of its rollouts"),
    # data pipelines, selectors and external models: rft_runtime.config.data_checks says what is refused there
    ("ExperiencePipelineConfig", "inputs"): (_unset, "the experience pipeline reads the explorer's experiences "
                                                     "only, no extra input buffers"),
}

# hand-written fields this runtime does not read on Tinker (the rest of the hand-written ones it honours)
NO_EFFECT_ON_TINKER = {
    ("OptimizerConfig", "clip_grad"),  # trainer.grad_clip is the clip
    ("AlgorithmConfig", "kl_penalty_fn_args"),
    ("ModelConfig", "lora_configs"),  # Tinker's adapter is model.tinker's
    # ray_address and node_num place the workflow runners on Ray (rft_runtime.loop.ray_runners)
    ("ClusterConfig", "gpu_per_node"),
    ("TasksetConfig", "index"), ("TasksetConfig", "enable_progress_bar"), ("TasksetConfig", "is_eval"),
    ("ExperienceBufferConfig", "index"), ("ExperienceBufferConfig", "enable_progress_bar"),
    ("GenerationConfig", "n"),
    ("InferenceModelConfig", "tensor_parallel_size"), ("InferenceModelConfig", "gpu_memory_utilization"),
    ("InferenceModelConfig", "dtype"),
    ("ExplorerConfig", "name"),
    ("TrainerConfig", "name"), ("TrainerConfig", "enable_preview"), ("TrainerConfig", "save_strategy"),
    ("TrainerConfig", "trainer_config"), ("TrainerConfig", "trainer_config_path"),
    ("TrainerInput", "sft_warmup_dataset"), ("TrainerInput", "sft_warmup_steps"),
    ("Config", "ray_namespace"),
}


# fields only Trinity's facts define (no hand-written model) that this runtime honours all the same
HONOURED_FROM_FACTS = {
    ("ExplorerConfig", "env_vars"),  # the workflow runners' environment (Ray actors, or this process)
    ("FormatConfig", "chosen_key"), ("FormatConfig", "rejected_key"),  # dpo's replies
} | set(LOOP_NOTES)  # synchronisation, batching, replay, modes, buffers and row columns (rft_runtime.loop)


def treatment(trinity_class: str, field: str, path: str = "") -> str:
    """honoured, no effect or refused (refused: for values other than the one the runtime matches); `path`
    tells an auxiliary model's settings (its own sampling client) from the policy's engine settings."""
    key = (trinity_class, field)
    if key in REFUSED_ON_TINKER:
        return REFUSED
    if key in HONOURED_FROM_FACTS:
        return HONOURED
    if path.startswith("explorer.auxiliary_models["):
        from rft_runtime.workflows.auxiliary import HONOURED as AUXILIARY_HONOURED

        if field in AUXILIARY_HONOURED:
            return HONOURED
    if key in NO_EFFECT_ON_TINKER or key in FROM_FACTS:
        return NO_EFFECT
    return HONOURED


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
