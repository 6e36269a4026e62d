"""Sampling sessions and the batched sampling of their requests.

A sampler decodes the base model or frozen LoRA weights: a saved checkpoint, or a snapshot of a training run
(save_weights_and_get_sampling_client), which waits on disk until its session ends. Loaded sampler adapters
are kept in a small LRU (MAX_SAMPLER_ADAPTERS, MAX_SAMPLER_ADAPTER_MB); an evicted one is read from disk again
when asked for. An RL loop makes a snapshot sampler every step: held in memory, they grew the engine by the
adapter's size a step (23 MB for rank 16 on SmolLM2-135M).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file

from rft_runtime.engine.checkpoints import Checkpoints
from rft_runtime.engine.decode import MAX_JOIN_ROWS, decode
from rft_runtime.engine.errors import EngineError
from rft_runtime.engine.lora import Adapter, LoraSpec
from rft_runtime.engine.sampling import SampledSeq, SampleJob, SampleSpec
from rft_runtime.engine.threads import ThreadTuner
from rft_runtime.engine.transformer import Transformer

# loaded sampler adapters kept in memory (at most this many, and this many MB, but always the newest);
# older ones are read from disk again when asked for
MAX_SAMPLER_ADAPTERS = 8
MAX_SAMPLER_ADAPTER_MB = 64

JoinFn = Callable[[Callable[[SampleJob], bool], int], list[SampleJob]]


@dataclass
class Sampler:
    """One sampling session: the base model, or LoRA weights from a saved path or a snapshot file."""

    sampler_id: str
    base_model: str
    model_path: str | None = None
    lora: LoraSpec | None = None
    snapshot: Path | None = None

    @property
    def weights_key(self) -> str | None:
        """Which weights it samples: None for the base model, else the adapter cache's key."""
        if self.lora is None:
            return None
        return self.model_path or f"snapshot:{self.sampler_id}"


class Samplers:
    """Every sampling session of the engine, and the adapters they decode with."""

    def __init__(self, tf: Transformer, checkpoints: Checkpoints, new_adapter: Callable[[LoraSpec], Adapter],
                 decode_text: Callable[[list[int]], str], max_context: int, threads: ThreadTuner):
        self.tf = tf
        self.threads = threads
        self.checkpoints = checkpoints
        self.new_adapter = new_adapter
        self.decode_text = decode_text
        self.max_context = max_context
        self.sessions: dict[str, Sampler] = {}
        self.adapters: OrderedDict[str, Adapter] = OrderedDict()

    def add(self, sampler: Sampler) -> Sampler:
        """Register a sampling session."""
        self.sessions[sampler.sampler_id] = sampler
        return sampler

    def get(self, sampler_id: str) -> Sampler:
        """The sampler sampler_id, or a 404 EngineError."""
        s = self.sessions.get(sampler_id)
        if s is None:
            raise EngineError(f"unknown sampling session {sampler_id!r} (was the engine restarted?)", status=404)
        return s

    def drop(self, sampler_id: str) -> None:
        """Forget a session, its snapshot's adapter and file."""
        s = self.sessions.pop(sampler_id, None)
        self.forget(f"snapshot:{sampler_id}")
        if s is not None and s.snapshot is not None:
            s.snapshot.unlink(missing_ok=True)

    def add_snapshot(self, sampler: Sampler, adapter: Adapter) -> Sampler:
        """Register a snapshot sampler whose weights are already on disk, caching its adapter (used next)."""
        self.add(sampler)
        self._cache(f"snapshot:{sampler.sampler_id}", adapter.freeze())
        return sampler

    def _cache(self, key: str, adapter: Adapter) -> None:
        self.adapters[key] = adapter
        budget = MAX_SAMPLER_ADAPTER_MB * 2**20
        while len(self.adapters) > 1 and (len(self.adapters) > MAX_SAMPLER_ADAPTERS
                                          or sum(a.nbytes() for a in self.adapters.values()) > budget):
            self.adapters.popitem(last=False)

    def forget(self, key: str) -> None:
        """Unload the adapter cached under key (a checkpoint path or snapshot:ID), if loaded."""
        self.adapters.pop(key, None)

    def _adapter(self, s: Sampler) -> Adapter | None:
        key = s.weights_key
        if key is None or s.lora is None:
            return None
        if key in self.adapters:
            self.adapters.move_to_end(key)
            return self.adapters[key]
        state = load_file(str(s.snapshot)) if s.snapshot is not None else self.checkpoints.read(s.model_path or "")[1]
        adapter = self.new_adapter(s.lora)
        try:
            adapter.load_state(state)
        except ValueError as exc:
            raise EngineError(str(exc)) from exc
        self._cache(key, adapter.freeze())
        return adapter

    def _key(self, job: SampleJob) -> str | None:
        s = self.get(job.sampler_id)
        if len(job.prompt) + job.spec.max_tokens > self.max_context:
            raise EngineError(f"prompt ({len(job.prompt)} tokens) + max_tokens ({job.spec.max_tokens}) "
                              f"exceeds the model's context of {self.max_context}")
        return s.weights_key

    def sample(self, sampler_id: str, prompt: list[int], num_samples: int, spec: SampleSpec,
               prompt_logprobs: bool) -> tuple[list[SampledSeq], list[float] | None]:
        """Generate num_samples continuations of prompt (one batch); optionally the prompt's logprobs."""
        job = SampleJob(sampler_id, list(prompt), num_samples, spec, prompt_logprobs)
        self.sample_many([job])
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def sample_many(self, jobs: list[SampleJob], more: JoinFn | None = None,
                    on_done: Callable[[SampleJob], None] | None = None, max_rows: int | None = None) -> None:
        """Decode many sample requests: those on the same weights share one batch, one forward per token.

        Each job gets its `result` or its own `error` (a bad request fails alone, not the batch), and
        on_done(job) as soon as its sequences are finished. `more(accept, rows)`, when given, is asked at
        every decoding step for further waiting jobs (those `accept` takes, up to `rows` sequences), which
        join the running batch while it holds fewer than max_rows sequences."""
        done = on_done or (lambda job: None)
        cap = max_rows or MAX_JOIN_ROWS
        groups: OrderedDict[str | None, list[SampleJob]] = OrderedDict()
        for job in jobs:
            try:
                key = self._key(job)
                if key not in groups:
                    self._adapter(self.get(job.sampler_id))  # a bad checkpoint fails its own jobs here
            except Exception as exc:  # handed back with this job only
                job.error = exc
                done(job)
                continue
            groups.setdefault(key, []).append(job)
        for key, group in groups.items():
            started: list[SampleJob] = []
            try:
                # loaded again here: a later group's adapter may have evicted this one from the LRU
                adapter = self._adapter(self.get(group[0].sampler_id))

                def accept(job: SampleJob, key: str | None = key) -> bool:
                    try:
                        return self._key(job) == key
                    except EngineError:
                        return False  # it fails on its own turn, with its own message

                joiner = (lambda rows, accept=accept: more(accept, rows)) if more is not None else None
                decode(self.tf, adapter, group, joiner, done, started, cap, self.decode_text, self.threads)
            except Exception as exc:
                for job in group + started:
                    if job.result is None and job.error is None:
                        job.error = exc
                        done(job)
