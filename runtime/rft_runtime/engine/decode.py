"""Batched decoding: the sequences of many sample requests on one set of weights advance together, one
forward per token, in one preallocated KV cache.

Each job's prompt is prefilled once (prompts left-padded to a common length) and its cache rows repeated per
sample; a row leaves the batch when it stops, and jobs handed over between steps join it (the shorter cache
left-padded to the longer one's length).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rft_runtime.engine.lora import Adapter
from rft_runtime.engine.sampling import SampledSeq, SampleJob, StopChecker, pick_tokens, sequence_generators
from rft_runtime.engine.threads import ThreadTuner
from rft_runtime.engine.transformer import KVCache, Transformer

# sequences one decoding batch grows to at most by jobs joining it, unless the caller says otherwise
MAX_JOIN_ROWS = 64
# columns a cache grows by when a joiner needs more room than it has
GROW = 32


class DecodeBatch:
    """The state of one decoding batch: KV cache, which columns each row may see, positions, logits, and
    which sample of which job each row is."""

    def __init__(self, tf: Transformer, adapter: Adapter | None, cache: KVCache, valid: torch.Tensor,
                 pos: torch.Tensor, logits: torch.Tensor, rows: list[tuple[SampleJob, int]],
                 decode_text: Callable[[list[int]], str]):
        self.tf, self.adapter = tf, adapter
        self.cache, self.valid, self.pos, self.logits = cache, valid, pos, logits
        self.rows = rows
        self.next_tokens: list[int] = []
        self.gens: dict[int, list[torch.Generator]] = {}
        self.checkers: dict[int, StopChecker] = {}
        self.left: dict[int, int] = {}  # rows still running, per job
        self.seqs: dict[int, list[SampledSeq]] = {}
        for job, _ in rows:
            jid = id(job)
            if jid not in self.gens:
                self.gens[jid] = sequence_generators(job.spec.seed, job.num_samples)
                self.checkers[jid] = StopChecker(job.spec, decode_text)
                self.left[jid] = job.num_samples
                self.seqs[jid] = [SampledSeq([], [], "length") for _ in range(job.num_samples)]

    @classmethod
    def prefill(cls, tf: Transformer, adapter: Adapter | None, jobs: list[SampleJob],
                decode_text: Callable[[list[int]], str]) -> DecodeBatch:
        """One forward over the jobs' prompts (left-padded), the cache repeated to one row per sample."""
        dev = tf.device
        width = max(len(j.prompt) for j in jobs)
        ids = torch.zeros((len(jobs), width), dtype=torch.long)
        real = torch.zeros((len(jobs), width), dtype=torch.bool)
        for i, j in enumerate(jobs):
            ids[i, width - len(j.prompt):] = torch.tensor(j.prompt, dtype=torch.long)
            real[i, width - len(j.prompt):] = True
        ids, real = ids.to(dev), real.to(dev)
        want_prompt = any(j.prompt_logprobs for j in jobs)
        logits, kv = tf.prefill(ids, real, adapter, all_logits=want_prompt)
        if want_prompt:
            lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            picked = lp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1).cpu()
            for i, j in enumerate(jobs):
                if j.prompt_logprobs:
                    j.prompt_lps = [float("nan")] + picked[i, width - len(j.prompt):].tolist()
        rows = [(j, k) for j in jobs for k in range(j.num_samples)]
        source = torch.tensor([i for i, j in enumerate(jobs) for _ in range(j.num_samples)], dtype=torch.long,
                              device=dev)
        capacity = width + max(j.spec.max_tokens for j in jobs)
        cache = tf.new_cache(len(rows), capacity)
        for layer in range(len(tf.layers)):
            cache.k[layer, :, :, :width] = kv[2 * layer][source].transpose(1, 2)
            cache.v[layer, :, :, :width] = kv[2 * layer + 1][source].transpose(1, 2)
        cache.length = width
        valid = torch.ones((len(rows), capacity), dtype=torch.bool, device=dev)
        valid[:, :width] = real[source]
        pos = real.long().sum(-1)[source] - 1
        return cls(tf, adapter, cache, valid, pos, logits[:, -1][source], rows, decode_text)

    def pick(self) -> list[SampleJob]:
        """Draw each row's next token from the current logits; drop stopped rows; return finished jobs."""
        specs = [job.spec for job, _ in self.rows]
        gens = [self.gens[id(job)][k] for job, k in self.rows]
        tokens, logprobs = pick_tokens(self.logits, specs, gens)
        keep: list[int] = []
        self.next_tokens = []
        finished: list[SampleJob] = []
        for b, (job, k) in enumerate(self.rows):
            jid = id(job)
            tok = tokens[b]
            seq = self.seqs[jid][k]
            seq.tokens.append(tok)
            seq.logprobs.append(logprobs[b])
            if self.checkers[jid].stopped(seq.tokens):
                seq.stop_reason = "stop"
            elif len(seq.tokens) < job.spec.max_tokens:
                keep.append(b)
                self.next_tokens.append(tok)
                continue
            self.left[jid] -= 1
            if self.left[jid] == 0:
                job.result = (self.seqs[jid], job.prompt_lps)
                finished.append(job)
        if len(keep) < len(self.rows):
            sel = torch.tensor(keep, dtype=torch.long, device=self.tf.device)
            if keep:
                self.cache.k = self.cache.k[:, sel]
                self.cache.v = self.cache.v[:, sel]
            self.valid, self.pos, self.logits = self.valid[sel], self.pos[sel], self.logits[sel]
            self.rows = [self.rows[b] for b in keep]
        return finished

    def step(self) -> None:
        """One forward of every running row's newest token."""
        if self.cache.length >= self.cache.capacity:
            self._resize(self.cache.length, self.cache.capacity + GROW)
        self.pos = self.pos + 1
        tokens = torch.tensor(self.next_tokens, dtype=torch.long, device=self.tf.device)
        self.logits = self.tf.step(tokens, self.pos, self.cache, self.valid, self.adapter)

    def _resize(self, width: int, capacity: int) -> None:
        """Re-lay the cache as `width` filled columns (left-padded) in `capacity` columns."""
        cache = self.cache
        pad = width - cache.length
        new = self.tf.new_cache(len(self.rows), capacity)
        new.k[:, :, :, pad:width] = cache.k[:, :, :, : cache.length]
        new.v[:, :, :, pad:width] = cache.v[:, :, :, : cache.length]
        new.length = width
        valid = torch.ones((len(self.rows), capacity), dtype=torch.bool, device=self.tf.device)
        valid[:, :pad] = False
        valid[:, pad:width] = self.valid[:, : cache.length]
        self.cache, self.valid = new, valid

    def merge(self, other: DecodeBatch) -> None:
        """Append another batch's rows: the shorter cache is left-padded (masked) to the longer one."""
        width = max(self.cache.length, other.cache.length)
        room = max(self.cache.capacity - self.cache.length, other.cache.capacity - other.cache.length)
        self._resize(width, width + room)
        other._resize(width, width + room)
        self.cache.k = torch.cat([self.cache.k, other.cache.k], dim=1)
        self.cache.v = torch.cat([self.cache.v, other.cache.v], dim=1)
        self.valid = torch.cat([self.valid, other.valid])
        self.pos = torch.cat([self.pos, other.pos])
        self.logits = torch.cat([self.logits, other.logits])
        self.rows += other.rows
        for attr in ("gens", "checkers", "left", "seqs"):
            getattr(self, attr).update(getattr(other, attr))


def decode(tf: Transformer, adapter: Adapter | None, jobs: list[SampleJob],
           more: Callable[[int], list[SampleJob]] | None, done: Callable[[SampleJob], None],
           started: list[SampleJob], max_rows: int, decode_text: Callable[[list[int]], str],
           threads: ThreadTuner) -> None:
    """Decode jobs as one batch, calling done(job) as each finishes; `more(room)` hands over jobs that join
    between steps while the batch holds fewer than max_rows rows. Jobs that began are added to `started`."""
    batch = DecodeBatch.prefill(tf, adapter, jobs, decode_text)
    started.extend(jobs)
    while batch.rows:
        for job in batch.pick():
            done(job)
        if not batch.rows:
            break
        threads.run("decode", batch.step)
        room = max_rows - len(batch.rows)
        joiners = more(room) if more is not None and room > 0 else []
        if joiners:
            # after the step every running row has fresh logits, and the joiners' come from their prefill
            started.extend(joiners)
            batch.merge(DecodeBatch.prefill(tf, adapter, joiners, decode_text))

