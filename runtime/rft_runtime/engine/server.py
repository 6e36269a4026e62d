"""`rft engine serve`: the tinker SDK's HTTP protocol (v0.38) on loopback, backed by engine.core.Engine.

The HTTP handler here hands each request to routes.py, which validates it and queues the work on the
Service (service.py). Results of forward_backward and sample go back as the SDK's protobuf messages;
everything else is JSON.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import transformers
import zstandard

from rft_runtime.engine import memory, routes
from rft_runtime.engine.core import Engine, EngineError
from rft_runtime.engine.launcher import PORT_DIR_ENV
from rft_runtime.engine.service import HTTPError, Service

log = logging.getLogger("rft.engine")

# set by LocalEngine: the engine stops by itself when this process (its parent) dies
PARENT_ENV = "RFT_ENGINE_PARENT_PID"


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
        for noisy in ("httpx", "urllib3", "transformers"):
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
    # MKL's float32 products give the same bits on any thread count (its strict reproducible mode, read at its
    # first product, so before the model loads): the thread tuner changes the count between requests, and a
    # LoRA product such as [1, 576] @ [576, 16] came out otherwise in its last bit, which a bfloat16 product
    # downstream can round into another logit; a seeded request must give the same tokens every time
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
    memory.keep_freed()  # the compute loop hands it back when idle (service.IDLE_RELEASE_S)
    if level > logging.DEBUG:
        # the engine log is one line per event: no weight-loading progress bars, no library deprecations
        transformers.utils.logging.disable_progress_bar()
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")

    state_dir = Path(args.state_dir).expanduser() if args.state_dir else default_state_dir()
    try:
        engine = Engine(args.model, state_dir, device=args.device, max_rank=args.max_rank)
    except (EngineError, OSError) as exc:
        print(f"error: cannot load the model: {exc}", file=sys.stderr)
        return 2
    env_threads = os.environ.get("RFT_ENGINE_THREADS", "")
    engine.threads.configure(compute_threads(engine), fixed=env_threads.isdigit() and int(env_threads) > 0)
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

    def _serve() -> None:
        try:
            httpd.serve_forever(poll_interval=0.2)
        finally:
            service.stop()  # the compute loop on the main thread returns once the work before this is done

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
    log.info("serving %s at http://%s:%d (state dir %s, device %s, %s torch threads, api key %s)",
             engine.model_name, host, port, engine.state_dir, engine.device,
             str(engine.threads.most) if engine.threads.fixed else f"1 to {engine.threads.most} (by timing)",
             "required" if args.api_key else "not checked")
    http = threading.Thread(target=_serve, name="rft-engine-http", daemon=True)
    http.start()
    try:
        service.run()
    finally:
        if not stop_once.is_set():  # the compute loop ended on its own: stop serving too
            stop_once.set()
            httpd.shutdown()
        http.join(timeout=30)
        httpd.server_close()
        if args.port_file:
            _remove_port_file(Path(args.port_file))
        log.info("stopped")
    return 0


def _remove_port_file(pf: Path) -> None:
    """Remove the port file, and its folder when LocalEngine made that folder for it alone."""
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
    """Torch threads for the compute thread: RFT_ENGINE_THREADS, else default_threads for the model's size."""
    env = os.environ.get("RFT_ENGINE_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return default_threads(engine.tf.parameter_count())


def default_threads(params: int) -> int:
    """1 for models under 20M parameters, else one per core up to 8.

    A tiny model's matmuls are too small to split: with two threads on a shared two-core machine every
    layer waits on a thread barrier, and forward_backward and sample ran ten times slower than on one.
    """
    return 1 if params < 20_000_000 else max(1, min(os.cpu_count() or 1, 8))


def default_state_dir() -> Path:
    """Where tinker:// checkpoints go when --state-dir is not given."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rft" / "engine-state"
