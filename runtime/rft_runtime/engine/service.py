"""The protocol state behind the HTTP server: sessions, futures, and the compute queue in front of the Engine.

Requests are validated on the HTTP threads and answered at once with a future id; the model work runs in
order on one compute thread (calls on one training client must run in submission order, and the CPU has
few cores to share anyway). `retrieve_future` long-polls until the result is ready, so a client waits one
round trip, not a polling interval.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from rft_runtime.engine import memory, wire
from rft_runtime.engine.errors import EngineError
from rft_runtime.engine.losses import LossInputError
from rft_runtime.engine.sampling import SamplingParamsError

log = logging.getLogger("rft.engine")

API = "/api/v1/"
# below the SDK's 45 s read timeout for retrieve_future; RFT_ENGINE_LONG_POLL_S=0 answers try_again at once
LONG_POLL_S = 20.0
MAX_KEPT_FUTURES = 4096
# sequences decoded together at most (RFT_ENGINE_MAX_BATCH_ROWS): bounds the KV cache of one batch
MAX_BATCH_ROWS = 64
# work a sample request must not be moved ahead of: these change which samplers and weights exist
SAMPLE_BARRIERS = frozenset({"delete_checkpoint", "finish_session"})


class HTTPError(Exception):
    """An error answered directly to an HTTP request (not through a future)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Future:
    """One queued piece of work and, once done, its answer: (content_type, body bytes)."""

    __slots__ = ("request_id", "done", "content_type", "body", "created", "label", "server_s")

    def __init__(self, request_id: str, label: str):
        self.request_id = request_id
        self.label = label
        self.done = threading.Event()
        self.content_type = "application/json"
        self.body = b""
        self.created = time.monotonic()
        self.server_s = 0.0

    def finish(self, content_type: str, body: bytes) -> None:
        self.content_type, self.body = content_type, body
        self.done.set()


class SampleWork:
    """A sample request on the compute queue, which the compute thread may decode together with others."""

    __slots__ = ("job", "encode")

    def __init__(self, job: Any, encode: Callable[[Any], bytes]):
        self.job = job
        self.encode = encode


WorkItem = tuple[Future, Any, str]


# what WorkQueue.get answers when its wait timed out
IDLE = object()
# seconds without work after which the compute loop hands freed memory back (memory.release): a
# forward_backward's activations are freed pieces of hundreds of MB, which the next call reuses when it comes
# right after (a release between two calls cost SmolLM2-135M's 932-token forward_backward 176k page faults
# and 0.4 s of system time, about 8% of the call)
IDLE_RELEASE_S = 1.0


class WorkQueue:
    """The compute thread's queue, in submission order, from which waiting sample requests can be taken
    together: those behind other work may go first (sampler weights never change once made), but never past
    a barrier (SAMPLE_BARRIERS), and training work keeps its own order."""

    def __init__(self) -> None:
        self.items: deque[WorkItem | None] = deque()
        self.cond = threading.Condition()

    def put(self, item: WorkItem | None) -> None:
        """Append one item (None stops the compute thread)."""
        with self.cond:
            self.items.append(item)
            self.cond.notify()

    def stop(self) -> None:
        """Drop everything queued and have get() answer None next."""
        with self.cond:
            self.items.clear()
            self.items.append(None)
            self.cond.notify()

    def get(self, timeout: float | None = None) -> WorkItem | None | object:
        """The oldest item, waiting for one (IDLE when `timeout` seconds pass first)."""
        with self.cond:
            if not self.items and timeout is not None:
                self.cond.wait(timeout)
                if not self.items:
                    return IDLE
            while not self.items:
                self.cond.wait()
            return self.items.popleft()

    def take_samples(self, max_rows: int, accept: Callable[[Any], bool] | None = None,
                     only_if_idle: bool = False) -> list[WorkItem]:
        """Remove and return waiting sample items (those whose job `accept` takes), oldest first, up to
        max_rows sequences in all. only_if_idle: none while other work waits (a running batch taking
        joiners must not keep training work waiting indefinitely)."""
        taken: list[WorkItem] = []
        with self.cond:
            if only_if_idle and any(item is None or not isinstance(item[1], SampleWork) for item in self.items):
                return taken
            kept = []
            rows = 0
            while self.items:
                item = self.items.popleft()
                if item is None or item[0].label in SAMPLE_BARRIERS:
                    kept.append(item)
                    kept.extend(self.items)
                    self.items.clear()
                    break
                work = item[1]
                if (isinstance(work, SampleWork) and rows + work.job.num_samples <= max_rows
                        and (accept is None or accept(work.job))):
                    rows += work.job.num_samples
                    taken.append(item)
                else:
                    kept.append(item)
            self.items.extend(kept)
        return taken


class Service:
    """Protocol state: sessions, futures, and the compute queue in front of the Engine (run() works it off)."""

    def __init__(self, engine: Any, api_key: str | None):
        self.engine = engine
        self.api_key = api_key
        self.sessions: dict[str, dict[str, Any]] = {}
        self.futures: OrderedDict[str, Future] = OrderedDict()
        self.lock = threading.Lock()
        self.work = WorkQueue()
        env_rows = os.environ.get("RFT_ENGINE_MAX_BATCH_ROWS", "")
        self.max_batch_rows = int(env_rows) if env_rows.isdigit() and int(env_rows) > 0 else MAX_BATCH_ROWS
        self.counter = 0
        # names of checkpoints queued but not yet written, so a duplicate is refused at submission
        self.pending_names: set[str] = set()
        self.stats: dict[str, list[float]] = {}
        self.long_poll_s = float(os.environ.get("RFT_ENGINE_LONG_POLL_S") or LONG_POLL_S)
        self.try_agains = 0

    # ------------------------------------------------------------------ futures

    def submit(self, label: str, fn: Callable[[], Any] | SampleWork, kind: str = "json",
               model_id: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Queue fn (or a SampleWork) on the compute thread; returns the UntypedAPIFuture JSON the SDK expects."""
        with self.lock:
            self.counter += 1
            fut = Future(f"req-{self.counter}-{uuid.uuid4().hex[:8]}", label)
            self.futures[fut.request_id] = fut
            while len(self.futures) > MAX_KEPT_FUTURES:
                oldest = next(iter(self.futures.values()))
                if not oldest.done.is_set():
                    break
                self.futures.popitem(last=False)
        self.work.put((fut, fn, kind))
        out: dict[str, Any] = {"request_id": fut.request_id}
        if model_id is not None:
            out["model_id"] = model_id
        if extra:
            out.update(extra)
        return out

    def run(self) -> None:
        """The compute loop: run queued work in order until stop(). `rft engine serve` runs it on the main
        thread, the one that loaded the model: its memory is reused (a second thread allocates from another
        malloc arena, and a forward_backward then grew the process by 200 MB more) and torch's threads are
        the ones it already started."""
        release_when_idle = False
        while True:
            item = self.work.get(IDLE_RELEASE_S if release_when_idle else None)
            if item is IDLE:
                memory.release()
                release_when_idle = False
                continue
            if item is None:
                return
            fut, fn, kind = item
            release_when_idle = True
            if isinstance(fn, SampleWork):
                self._run_samples([item] + self.work.take_samples(self.max_batch_rows - fn.job.num_samples))
                continue
            started = time.perf_counter()
            try:
                result = fn()
                if kind == "proto":
                    fut_body, ctype = result, "application/x-protobuf"
                else:
                    fut_body, ctype = json.dumps(result).encode(), "application/json"
            except (EngineError, LossInputError, SamplingParamsError, ValueError) as exc:
                fut_body, ctype = wire.failed(str(exc), "user"), "application/json"
                log.info("%s failed: %s", fut.label, exc)
            except Exception as exc:  # a bug or a resource problem: report it, keep serving
                log.exception("%s crashed", fut.label)
                fut_body, ctype = wire.failed(f"engine error in {fut.label}: {exc!r}", "server"), "application/json"
            fut.server_s = time.perf_counter() - started
            self.stats.setdefault(fut.label, []).append(fut.server_s)
            if len(self.stats[fut.label]) > 1000:
                del self.stats[fut.label][:500]
            fut.finish(ctype, fut_body)

    def _run_samples(self, items: list[WorkItem]) -> None:
        """Decode sample requests as one batch, which requests arriving meanwhile join; each future is
        answered as soon as its own sequences are done."""
        started = time.perf_counter()
        pending: dict[int, WorkItem] = {id(item[1].job): item for item in items}
        counts = {"requests": len(items), "rows": sum(item[1].job.num_samples for item in items)}

        def more(accept: Callable[[Any], bool], rows: int) -> list[Any]:
            joined = self.work.take_samples(rows, accept=accept, only_if_idle=True)
            for item in joined:
                pending[id(item[1].job)] = item
                counts["requests"] += 1
                counts["rows"] += item[1].job.num_samples
            return [item[1].job for item in joined]

        def finish(job: Any) -> None:
            item = pending.pop(id(job), None)
            if item is None:
                return
            fut, work, _ = item
            body, ctype = b"", "application/x-protobuf"
            if job.error is None:
                try:
                    body = work.encode(job)
                except Exception as exc:
                    job.error = exc
            if job.error is not None:
                user = isinstance(job.error, (EngineError, SamplingParamsError, ValueError))
                if not user:
                    log.error("sample failed: %r", job.error)
                body = wire.failed(str(job.error) if user else f"engine error in sample: {job.error!r}",
                                   "user" if user else "server")
                ctype = "application/json"
            fut.server_s = time.perf_counter() - started
            self.stats.setdefault("sample", []).append(fut.server_s)
            fut.finish(ctype, body)

        try:
            self.engine.samplers.sample_many([item[1].job for item in items], more=more, on_done=finish,
                                    max_rows=self.max_batch_rows)
        except Exception as exc:  # a bug or a resource problem: every request still waiting reports it
            log.exception("sample batch crashed")
            for item in list(pending.values()):
                item[1].job.error = item[1].job.error or exc
        for item in list(pending.values()):  # nothing may be left unanswered
            job = item[1].job
            if job.error is None and job.result is None:
                job.error = RuntimeError("the sample batch ended without this request's result")
            finish(job)
        if counts["requests"] > 1:
            log.debug("decoded %d sample requests (%d sequences) in one batch: %.2fs", counts["requests"],
                      counts["rows"], time.perf_counter() - started)
        self.stats.setdefault("sample_batch_rows", []).append(float(counts["rows"]))
        for label in ("sample", "sample_batch_rows"):
            if len(self.stats[label]) > 1000:
                del self.stats[label][:500]
        memory.release()  # a batch's caches and joins leave freed pieces the next call rarely fits

    def retrieve(self, request_id: str) -> Future | None:
        """Wait (bounded) for a future; None when it is still running after the long poll."""
        with self.lock:
            fut = self.futures.get(request_id)
        if fut is None:
            raise HTTPError(404, f"unknown request_id {request_id!r} (was the engine restarted?)")
        if fut.done.wait(self.long_poll_s):
            return fut
        self.try_agains += 1
        return None

    def stop(self) -> None:
        """Let the compute loop finish the work it is doing and return; queued work is dropped (the process
        is ending, and its clients with it)."""
        self.work.stop()
