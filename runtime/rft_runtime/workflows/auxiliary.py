"""explorer.auxiliary_models on Tinker: each is a sampling client of a base model, wrapped like the policy.

A judge or reward model named here reaches workflows as `self.auxiliary_model_wrappers[i]` (the
ModelWrapper surface) and `self.auxiliary_models[i]` (an OpenAI client). Its weights never change.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from rft_runtime.workflows.base import WorkflowError
from rft_runtime.workflows.external import ExternalModel
from rft_runtime.workflows.model import ModelSettings, ModelWrapper

log = logging.getLogger(__name__)

# Trinity's InferenceModelConfig fields this runtime honours for an auxiliary model
HONOURED = {"model_path", "name", "temperature", "top_p", "top_k", "max_response_tokens", "max_prompt_tokens",
            "max_model_len", "chat_template", "enable_thinking", "seed", "engine_type", "external_model_config",
            "enable_prompt_truncation"}
# fields that size or place vLLM engines: there are none with Tinker, so they change nothing here
ENGINE_ONLY = {"engine_num", "tensor_parallel_size", "gpu_memory_utilization", "dtype",
               "enable_prefix_caching", "enforce_eager", "enable_openai_api", "enable_history", "use_v1",
               "enable_chunked_prefill", "bundle_indices", "ray_namespace", "cuda_visible_devices",
               "trust_remote_code", "enable_auto_tool_choice", "tool_call_parser", "reasoning_parser",
               "enable_lora", "lora_modules", "base_port", "logprobs"}


def as_entries(models: Any) -> list[Any]:
    """explorer.auxiliary_models as mappings of the values that differ from the defaults (what the user set)."""
    return [m.model_dump(exclude_defaults=True) if hasattr(m, "model_dump") else m for m in (models or [])]


def check_auxiliary_models(entries: list[Any]) -> None:
    """Refuse auxiliary model settings this runtime would not honour, naming the field."""
    for i, entry in enumerate(as_entries(entries)):
        where = f"explorer.auxiliary_models[{i}]"
        if not isinstance(entry, dict):
            raise WorkflowError(f"{where} must be a mapping with at least model_path")
        if not entry.get("model_path"):
            raise WorkflowError(f"{where}.model_path is required: the Tinker base model to sample from")
        if entry.get("engine_type") == "external":
            # the endpoint's address is read when the first batch runs: a missing one should stop the job now
            var = (entry.get("external_model_config") or {}).get("base_url_env", "OPENAI_BASE_URL")
            if not os.environ.get(var):
                raise WorkflowError(f"{where}.external_model_config.base_url_env: set the environment variable "
                                    f"{var} to the OpenAI-compatible endpoint's address")
        unknown = sorted(set(entry) - HONOURED - ENGINE_ONLY)
        if unknown:
            raise WorkflowError(f"{where}.{unknown[0]} is not an auxiliary model setting this runtime knows; "
                                f"known: {', '.join(sorted(HONOURED))}")
        ignored = sorted(k for k in set(entry) & ENGINE_ONLY if k != "enable_openai_api")
        if ignored:
            log.info("%s: %s size vLLM engines and do nothing with Tinker", where, ", ".join(ignored))


def _base_model_name(name: str) -> str:
    path = Path(name).expanduser()
    # the engine serves a local directory under its absolute path
    return str(path.resolve()) if path.is_dir() else name


class AuxiliaryModels:
    """Sampling clients of explorer.auxiliary_models, rebuilt when the connection to the server is."""

    def __init__(self, cfg: Any, conn: Any, server: Any = None):
        self.cfg = cfg
        self.conn = conn
        self.server = server
        self.entries = as_entries(cfg.explorer.auxiliary_models)
        check_auxiliary_models(self.entries)
        self._wrappers: list[ModelWrapper] = []
        self._generation = -1

    def _settings(self, entry: dict[str, Any]) -> ModelSettings:
        m = self.cfg.model

        def pick(key: str, default: Any) -> Any:
            return entry[key] if entry.get(key) is not None else default

        return ModelSettings(
            name=str(entry.get("name") or entry["model_path"]),
            max_tokens=int(pick("max_response_tokens", m.max_response_tokens or 512)),
            temperature=float(pick("temperature", m.temperature)), top_p=float(pick("top_p", m.top_p)),
            top_k=int(pick("top_k", m.top_k)),
            # Trinity fills an auxiliary model's limit and truncation switch from the model section's
            max_prompt_tokens=(pick("max_prompt_tokens", m.max_prompt_tokens)
                               if pick("enable_prompt_truncation", m.enable_prompt_truncation) else None),
            max_model_len=pick("max_model_len", m.context_len),
            # Trinity: an auxiliary model takes model.enable_thinking unless it sets its own
            enable_thinking=pick("enable_thinking", m.enable_thinking),
            # Trinity: auxiliary models never record history, and always offer the OpenAI API
            enable_history=False, enable_openai_api=True, timeout=float(self.cfg.explorer.max_timeout),
        )

    def _tokenizer(self, name: str, sampler: Any) -> Any:
        path = Path(name).expanduser()
        if path.is_dir():
            from transformers import AutoTokenizer  # ~1 s to import: only a local model directory needs it

            return AutoTokenizer.from_pretrained(str(path.resolve()))
        return sampler.get_tokenizer()

    def wrappers(self) -> list[ModelWrapper]:
        """One wrapper per auxiliary model, on the current connection."""
        if self._generation != self.conn.generation or len(self._wrappers) != len(self.entries):
            timeout = float(self.cfg.synchronizer.sync_timeout)
            made = []
            for i, entry in enumerate(self.entries):
                if entry.get("engine_type") == "external":
                    # a judge behind an OpenAI-compatible endpoint: no Tinker sampler
                    ext = self.cfg.explorer.auxiliary_models[i].external_model_config
                    made.append(ExternalModel(ext, replace(self._settings(entry), name=str(ext.model_name)),
                                              where=f"explorer.auxiliary_models[{i}].external_model_config"))
                    continue
                name = _base_model_name(str(entry["model_path"]))
                sampler = self.conn.service.create_sampling_client(base_model=name).result(timeout=timeout)
                seed = entry.get("seed", self.cfg.explorer.rollout_model.seed + 1_000 * (i + 1))
                made.append(ModelWrapper(sampler, self._tokenizer(name, sampler), self._settings(entry),
                                         chat_template=entry.get("chat_template"), model_path=name,
                                         model_version=0, seed=seed, server=self.server))
            self._wrappers = made
            self._generation = self.conn.generation
        return self._wrappers
