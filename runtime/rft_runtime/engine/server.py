"""`rft engine serve`: the tinker SDK's HTTP protocol (v0.38) on loopback, backed by engine.core.Engine.

Requests are validated on the HTTP threads and answered at once with a future id; the model work runs in
order on one compute thread (calls on one training client must run in submission order, and the CPU has
few cores to share anyway). `retrieve_future` long-polls until the result is ready, so a client waits one
round trip, not a polling interval. Results of forward_backward and sample go back as the SDK's protobuf
messages; everything else is JSON.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger("rft.engine")

API = "/api/v1/"
# below the SDK's 45 s read timeout for retrieve_future; RFT_ENGINE_LONG_POLL_S=0 answers try_again at once
LONG_POLL_S = 20.0
MAX_KEPT_FUTURES = 4096
# sequences decoded together at most (RFT_ENGINE_MAX_BATCH_ROWS): bounds the KV cache of one batch
MAX_BATCH_ROWS = 64
# work a sample request must not be moved ahead of: these change which samplers and weights exist
SAMPLE_BARRIERS = frozenset({"delete_checkpoint", "finish_session"})
# set by LocalEngine: the engine stops by itself when this process (its parent) dies
PARENT_ENV = "RFT_ENGINE_PARENT_PID"


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


class WorkQueue:
    """The compute thread's queue, in submission order, from which waiting sample requests can be taken
    together: those behind other work may go first (sampler weights never change once made), but never past
    a barrier (SAMPLE_BARRIERS), and training work keeps its own order."""

    def __init__(self) -> None:
        from collections import deque

        self.items: deque[WorkItem | None] = deque()
        self.cond = threading.Condition()

    def put(self, item: WorkItem | None) -> None:
        """Append one item (None stops the compute thread)."""
        with self.cond:
            self.items.append(item)
            self.cond.notify()

    def get(self) -> WorkItem | None:
        """The oldest item, waiting for one."""
        with self.cond:
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
    """Protocol state: sessions, futures, and the compute thread in front of the Engine."""

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
        self.worker = threading.Thread(target=self._work_loop, name="rft-engine-compute", daemon=True)
        self.worker.start()

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

    def _work_loop(self) -> None:
        from rft_runtime.engine import wire
        from rft_runtime.engine.core import EngineError
        from rft_runtime.engine.losses import LossInputError
        from rft_runtime.engine.sampling import SamplingParamsError

        while True:
            item = self.work.get()
            if item is None:
                return
            fut, fn, kind = item
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
        from rft_runtime.engine import wire
        from rft_runtime.engine.core import EngineError
        from rft_runtime.engine.sampling import SamplingParamsError

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
            self.engine.sample_many([item[1].job for item in items], more=more, on_done=finish,
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
        """Let the compute thread finish what it is doing and end."""
        self.work.put(None)
        self.worker.join(timeout=30)


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback
                       for info in socket.getaddrinfo(host, None))
        except OSError:
            return False


def make_handler(service: Service) -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to one Service."""
    from rft_runtime.engine import routes

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the SDK reuses connections
        server_version = "rft-engine"

        def setup(self) -> None:
            super().setup()
            # small request/answer pairs: without NODELAY, Nagle + delayed ACK add ~40 ms to every call
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            pass  # one debug line per request is written in _handle instead

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

        def do_DELETE(self) -> None:  # noqa: N802
            self._handle("DELETE")

        def do_PUT(self) -> None:  # noqa: N802
            self._handle("PUT")

        def _read_body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.headers.get("Content-Encoding", "").lower() == "zstd" and body:
                import zstandard

                body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
            return body

        def _send(self, status: int, body: bytes, ctype: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            # headers and body in one write (one TCP segment for small answers)
            self._headers_buffer.append(b"\r\n" + body)
            self.flush_headers()

        def _handle(self, method: str) -> None:
            started = time.perf_counter()
            path = self.path.split("?", 1)[0]
            status = 500
            try:
                body = self._read_body()
                if not path.rstrip("/").endswith("healthz") and service.api_key is not None:
                    key = self.headers.get("X-API-Key") or ""
                    auth = self.headers.get("Authorization") or ""
                    if key != service.api_key and auth != f"Bearer {service.api_key}":
                        raise HTTPError(401, "invalid API key for this engine (check TINKER_API_KEY / api_key)")
                status, ctype, out, headers = routes.dispatch(service, method, path, body, self.headers)
                self._send(status, out, ctype, headers)
            except HTTPError as exc:
                status = exc.status
                msg = str(exc)
                self._send(status, json.dumps({"error": msg, "detail": msg}).encode())
            except Exception as exc:  # keep serving whatever one request did
                log.exception("%s %s crashed", method, path)
                status = 500
                msg = f"engine error: {exc!r}"
                try:
                    self._send(status, json.dumps({"error": msg, "detail": msg}).encode())
                except OSError:
                    pass
            log.debug("%s %s %d %.1fms", method, path, status, 1000 * (time.perf_counter() - started))

    return Handler


class EngineHTTPServer(ThreadingHTTPServer):
    """Threaded HTTP server whose threads die with the process."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def serve_main(args: Any) -> int:
    """`rft engine serve --model DIR [--host] [--port] [--state-dir] [--api-key] ...`."""
    level = getattr(logging, str(args.log_level).upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if level > logging.DEBUG:
        for noisy in ("httpx", "urllib3", "transformers", "peft"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    host = args.host
    if args.api_key is not None and not args.api_key.startswith(("tml-", "eyJ")):
        # the SDK refuses such a key before sending anything, so no client could ever connect
        print("error: --api-key must start with 'tml-': the tinker SDK refuses any other key before sending it, "
              "so no client could connect", file=sys.stderr)
        return 2
    if not _is_loopback(host) and not args.api_key:
        print(f"error: refusing to listen on {host!r} (not loopback) without --api-key: anyone who can reach "
              "it could train and sample on this machine", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # OpenMP's default spin-waiting makes every parallel op wait for a descheduled thread on a busy machine:
    # measured on SmolLM2-135M with 2 threads on 2 shared cores (load 5-10), a decoding step took 2.8 s
    # spinning, 0.38 s passive, 0.17 s on one thread. Set before torch loads its OpenMP runtime.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    import transformers

    if level > logging.DEBUG:
        # the engine log is one line per event: no weight-loading progress bars, no library deprecations
        transformers.utils.logging.disable_progress_bar()
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")

    from rft_runtime.engine.core import Engine, EngineError

    state_dir = Path(args.state_dir).expanduser() if args.state_dir else default_state_dir()
    try:
        engine = Engine(args.model, state_dir, device=args.device, max_rank=args.max_rank)
    except (EngineError, OSError) as exc:
        print(f"error: cannot load the model: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(compute_threads(engine))
    service = Service(engine, args.api_key)
    try:
        httpd = EngineHTTPServer((host, args.port), make_handler(service))
    except OSError as exc:
        print(f"error: cannot listen on {host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    port = httpd.server_address[1]
    stop_once = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        if not stop_once.is_set():
            stop_once.set()
            log.info("signal %d: stopping", signum)
            threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    parent = os.environ.get(PARENT_ENV)
    if parent and parent.isdigit():
        threading.Thread(target=_exit_with_parent, args=(int(parent), _stop, stop_once), daemon=True).start()
    if args.port_file:
        pf = Path(args.port_file)
        tmp = pf.with_name(pf.name + ".tmp")
        tmp.write_text(f"{port}\n")
        tmp.replace(pf)
    log.info("serving %s at http://%s:%d (state dir %s, device %s, %d torch threads, api key %s)",
             engine.model_name, host, port, engine.state_dir, engine.device, torch.get_num_threads(),
             "required" if args.api_key else "not checked")
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()
        service.stop()
        if args.port_file:
            _remove_port_file(Path(args.port_file))
        log.info("stopped")
    return 0


def _remove_port_file(pf: Path) -> None:
    """Remove the port file, and its folder when LocalEngine made that folder for it alone."""
    import shutil

    from rft_runtime.engine.launcher import PORT_DIR_ENV

    pf.unlink(missing_ok=True)
    if os.environ.get(PORT_DIR_ENV) == "1":
        shutil.rmtree(pf.parent, ignore_errors=True)


def _exit_with_parent(parent: int, stop: Callable[[int, Any], None], stopped: threading.Event) -> None:
    """Stop when the process that launched us is gone (it was SIGKILLed and could not stop us)."""
    while not stopped.wait(1.0):
        if os.getppid() != parent:
            log.warning("the launching process %d is gone: stopping", parent)
            stop(signal.SIGTERM, None)
            return


def compute_threads(engine: Any) -> int:
    """Torch threads for the compute thread: RFT_ENGINE_THREADS, else 1 for small models and up to 8 otherwise.

    A tiny model's matmuls are too small to split: with two threads on a shared two-core machine every
    layer waits on a thread barrier, and forward_backward and sample ran ten times slower than on one.
    """
    env = os.environ.get("RFT_ENGINE_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    params = sum(p.numel() for p in engine.model.parameters())
    return 1 if params < 20_000_000 else max(1, min(os.cpu_count() or 1, 8))


def default_state_dir() -> Path:
    """Where tinker:// checkpoints go when --state-dir is not given."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rft" / "engine-state"
