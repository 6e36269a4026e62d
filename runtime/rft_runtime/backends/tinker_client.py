"""Reaching a Tinker-compatible server from a job config, and getting back after it went away.

`base_url` null means the Tinker service (an API key is then required), "local" starts the local engine on a
free loopback port for the job's lifetime, and any other value is the URL of a server someone else runs.
The runtime only ever talks through the official SDK, so the three are the same code past this module.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rft_runtime.backends.errors import BackendError
from rft_runtime.config import API_KEY_VARS, JobConfig, tinker_api_key
from rft_runtime.config.local_model import MAKE_MODEL_HINT, local_model_problem, model_field
from rft_runtime.engine.launcher import LocalEngine

log = logging.getLogger(__name__)

# The local engine accepts any key of the SDK's shape; this one only has to pass the SDK's own check.
LOCAL_API_KEY = "tml-local"


def check_api_key(cfg: JobConfig) -> str:
    """The API key for this job's endpoint; raises before any work when the Tinker service needs one."""
    if cfg.model.tinker.base_url == "local":
        # the engine we start accepts only its own key; a Tinker service key must not be sent to it
        return LOCAL_API_KEY
    key = tinker_api_key()
    if key:
        return key
    if cfg.model.tinker.base_url is None:
        raise BackendError(
            "no Tinker API key: model.tinker.base_url is null, which means the Tinker service, and neither "
            f"{' nor '.join(API_KEY_VARS)} is set. Export one of them (e.g. `export TINKER_API_KEY=tml-...`), "
            "or set model.tinker.base_url: local to train on the local engine without an account"
        )
    return LOCAL_API_KEY


def local_model_dir(cfg: JobConfig) -> Path:
    """The model directory the local engine serves (tinker.base_model, else model_path); must exist."""
    name = cfg.model.tinker_base_model
    if not name:
        raise BackendError("model.model_path (or model.tinker.base_model) must name the model to train")
    found = local_model_problem(cfg) if cfg.model.tinker.base_url == "local" else None
    if found is not None:
        raise BackendError(found[0])
    path = Path(name).expanduser()
    if not path.is_dir():
        raise BackendError(f"{model_field(cfg)}: {name!r} is not a model directory; {MAKE_MODEL_HINT}")
    return path.resolve()


def check_local_model(cfg: JobConfig) -> None:
    """With base_url 'local', fail before any work (no dataset download) unless the model is a local directory."""
    if cfg.model.tinker.enable and cfg.model.tinker.base_url == "local":
        local_model_dir(cfg)


def healthy(base_url: str, timeout: float = 2.0) -> bool:
    """True when the server answers GET /api/v1/healthz with a 2xx."""
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/api/v1/healthz", timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


# How long a server may refuse connections (not answer slowly: refuse) before a wait for it ends, and how
# often that is checked. A server started beside the job (a sidecar, a pod that comes up late) gets a minute.
UNREACHABLE_GRACE_S = 60.0
PROBE_EVERY_S = 2.0


def listening(url: str, timeout: float = 2.0) -> bool:
    """True when something accepts a TCP connection at the URL's host and port (whatever it then answers)."""
    parts = urlsplit(url)
    if not parts.hostname:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def service_url(base_url: str | None) -> str:
    """The URL the SDK talks to: base_url, else $TINKER_BASE_URL, else the Tinker service's."""
    if base_url:
        return base_url
    try:
        from tinker.lib.base_url import resolve_base_url  # the SDK imports torch: see Connection._new_service

        return str(resolve_base_url(None))
    except Exception:  # an SDK without the helper: say what we know
        return os.environ.get("TINKER_BASE_URL") or "the Tinker service"


def within(timeout: float, what: str, url: str, fn: Any) -> Any:
    """fn() bounded by `timeout` seconds: the SDK blocks without a limit of its own when nothing answers
    (creating a training client retries the connection forever), so the call runs in a thread and a
    BackendError naming the URL ends the wait."""
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=call, name=f"tinker: {what}", daemon=True)
    worker.start()
    end = time.monotonic() + timeout
    # a server that may be slow gets the whole timeout, but one where nothing listens at all (connection
    # refused, a name that does not resolve) is not waited on for an hour: the SDK would retry it silently
    grace = min(timeout, UNREACHABLE_GRACE_S)
    unreachable_since: float | None = None
    while worker.is_alive() and time.monotonic() < end:
        worker.join(min(PROBE_EVERY_S, max(0.0, end - time.monotonic())))
        if not worker.is_alive() or not url.startswith("http"):
            continue
        now = time.monotonic()
        if listening(url):
            unreachable_since = None
        elif unreachable_since is None:
            unreachable_since = now
        elif now - unreachable_since >= grace:
            raise BackendError(
                f"{what}: nothing listens at {url} (no connection for {now - unreachable_since:.0f}s: refused, "
                "or the name does not resolve). Check model.tinker.base_url (or TINKER_BASE_URL) and that the "
                "server is running"
            )
    if worker.is_alive():
        if url.startswith("http"):
            answer = ("it answers GET /api/v1/healthz, so the server is up but did not finish the request"
                      if healthy(url) else "nothing answers GET /api/v1/healthz there (no server, or no network)")
        else:
            answer = "no answer came"
        raise BackendError(
            f"{what} at {url} did not finish within {timeout:.0f}s (synchronizer.sync_timeout): {answer}. "
            "Check model.tinker.base_url (or TINKER_BASE_URL) and the network, or raise synchronizer.sync_timeout"
        )
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _stop_leftover_engine(pid_file: Path) -> None:
    """Stop an engine a previous run of this job started and could not stop (it was SIGKILLed)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        pid_file.unlink(missing_ok=True)
        return
    # only a process that is our engine: the pid may have been reused by something else since
    if "engine" in cmdline and "serve" in cmdline:
        log.warning("stopping the local engine (pid %d) left over from an earlier run of this job", pid)
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                time.sleep(0.1)
                os.kill(pid, 0)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    pid_file.unlink(missing_ok=True)


# how often the job's own engine is checked to be running
ENGINE_CHECK_S = 2.0


class EngineExited(ConnectionError):
    """The local engine this job started is no longer running (a crash, the OOM killer): retryable, since
    reconnecting starts it again."""


class Connection:
    """A ServiceClient to the job's endpoint (starting the local engine first when asked) that can reconnect.

    `generation` counts reconnects: a client made from an older generation is assumed dead, so the explorer
    and the trainer each recreate theirs when they see it change.
    """

    def __init__(self, cfg: JobConfig, job_dir: Path | None = None, api_key: str | None = None):
        self.cfg = cfg
        self.job_dir = Path(job_dir or cfg.job_dir)
        self.api_key = api_key or check_api_key(cfg)
        self.engine: Any = None
        self.base_url: str | None = None
        self.service: Any = None
        self.generation = 0
        self._lock = threading.Lock()
        # where the local engine listens: loopback, or this node's address when Ray runners on other nodes
        # sample from it (set by the job before open())
        self.engine_host = "127.0.0.1"
        self._closing = threading.Event()  # set when the job stops its engine: the watcher stops with it

    # ------------------------------------------------------------ lifecycle

    def open(self) -> Connection:
        """Start the local engine when base_url is 'local' and create the ServiceClient."""
        os.environ.setdefault("TINKER_TELEMETRY", "0")
        url = self.cfg.model.tinker.base_url
        if url == "local":
            self._start_engine()
        else:
            self.base_url = url
        self.service = self._new_service()
        return self

    def _start_engine(self) -> None:
        model_dir = local_model_dir(self.cfg)
        self.job_dir.mkdir(parents=True, exist_ok=True)
        pid_file = self.job_dir / "engine.pid"
        _stop_leftover_engine(pid_file)
        # the engine keeps tinker:// checkpoints in the job directory, so a resumed run can load them
        state_dir = self.job_dir / "engine-state"
        self.engine = LocalEngine(
            model_dir, state_dir=state_dir, port=0, api_key=LOCAL_API_KEY,
            log_file=self.job_dir / "engine.log", host=self.engine_host,
        )
        try:
            self.engine.start(timeout=120)
        except BaseException:
            self._stop_engine()
            raise
        self.base_url = self.engine.base_url
        pid_file.write_text(f"{self.engine.pid}\n")
        log.info("local engine serving %s at %s (pid %d)", model_dir, self.base_url, self.engine.pid)
        self._closing = threading.Event()
        threading.Thread(target=self._watch_engine, name="engine-watch", daemon=True).start()

    def _watch_engine(self) -> None:
        """Start the job's engine again when it dies (a crash, the OOM killer) and replace the ServiceClient,
        so the explorer and the trainer rebuild their clients instead of polling a dead port: requests that
        were in flight fail (the new engine does not know them) and are redone."""
        while not self._closing.wait(ENGINE_CHECK_S):
            if self.engine is None or self.engine_exit() is None:
                continue
            try:
                self.reconnect(self.generation, time.monotonic() + 120)
            except Exception as exc:  # the trainer's own recovery reports what is left
                log.error("starting the local engine again failed: %s", exc)
                return

    def _stop_engine(self) -> None:
        if self.engine is None:
            return
        self._closing.set()
        try:
            self.engine.stop()
        except Exception as exc:  # stopping is best effort; the job's own error matters more
            log.warning("stopping the local engine failed: %s", exc)
        (self.job_dir / "engine.pid").unlink(missing_ok=True)
        self.engine = None

    def engine_exit(self) -> str | None:
        """None while the local engine this job started runs (or when it started none); else how it ended,
        with the end of its log."""
        engine = self.engine
        proc = getattr(engine, "proc", None)
        code = proc.poll() if proc is not None else None
        if code is None:
            return None
        try:
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        except ValueError:
            how = f"exit code {code}"
        lines = [line for line in engine.log_tail(6000).splitlines() if line.strip()]
        fatal = [i for i, line in enumerate(lines) if line.startswith("Fatal Python error")]
        tail = lines[fatal[-1]:fatal[-1] + 12] if fatal else lines[-8:]
        return (f"the local engine (pid {proc.pid}) stopped ({how}); the end of its log {engine.log_file}:\n  "
                + "\n  ".join(tail))

    def close(self, status: str | None = None) -> None:
        """Finish the session (success, or errored while an exception is propagating) and stop the engine.

        Finishing the session is what stops the SDK's heartbeat and config-refresh loops: an open session
        keeps sending requests until the process exits, and a response landing during interpreter shutdown
        aborts it (see quiesce_sdk).
        """
        if status is None:
            status = "errored" if sys.exc_info()[0] is not None else "success"
        service, self.service = self.service, None
        if service is not None:
            url = service_url(self.base_url)
            if url.startswith("http") and not listening(url):
                # nobody to tell: finishing would only wait out its bound (quiesce_sdk stops the SDK at exit)
                log.debug("not finishing the Tinker session: nothing listens at %s", url)
            else:
                _finish_service(service, status)
        self._stop_engine()

    def __enter__(self) -> Connection:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ clients

    def _new_service(self) -> Any:
        # the SDK imports torch (~2 s): a job that stops before it connects (no API key, a missing file) never
        # loads either, and so leaves no torch finalizers to fail at exit
        import tinker

        return tinker.ServiceClient(base_url=self.base_url, api_key=self.api_key)

    def reconnect(self, seen_generation: int, deadline: float) -> int:
        """Replace the ServiceClient once per failure (whoever comes first); returns the new generation."""
        with self._lock:
            if self.generation != seen_generation:
                return self.generation
            why = self.engine_exit()
            if why is not None and not self._closing.is_set():
                # the job's own engine died: start it again (same port, same checkpoints)
                log.warning("%s\nstarting the local engine again", why)
                self.engine.ensure_running(timeout=120)
                (self.job_dir / "engine.pid").write_text(f"{self.engine.pid}\n")
            if self.base_url:
                while not healthy(self.base_url):
                    if time.monotonic() > deadline:
                        raise BackendError(f"the server at {self.base_url} did not answer /api/v1/healthz")
                    time.sleep(0.5)
            old, self.service = self.service, self._new_service()
            self.generation += 1
            if old is not None:
                threading.Thread(target=_finish_service, args=(old, "errored"), daemon=True).start()
            return self.generation

    def base_model(self) -> str:
        """The base model name to ask the server for (an absolute path for a local directory)."""
        name = self.cfg.model.tinker_base_model or ""
        path = Path(name).expanduser()
        # the SDK mangles relative paths with two slashes, and the engine serves the absolute path
        return str(path.resolve()) if path.is_dir() else name

    def training_client(self, state_path: str | None, timeout: float) -> Any:
        """A LoRA training client: fresh with the config's rank/seed/train_*, or from a saved state; bounded
        by `timeout` even where the SDK would wait forever."""
        t = self.cfg.model.tinker

        def create() -> Any:
            if state_path:
                fut = self.service.create_training_client_from_state_with_optimizer(state_path)
            else:
                fut = self.service.create_lora_training_client(
                    base_model=self.base_model(), rank=t.rank, seed=t.seed,
                    train_mlp=t.train_mlp, train_attn=t.train_attn, train_unembed=t.train_unembed,
                )
            return fut.result(timeout=timeout) if hasattr(fut, "result") else fut

        return within(timeout, "creating the training client", service_url(self.base_url), create)

    def sampling_client(self, model_path: str | None, timeout: float) -> Any:
        """A sampling client for saved sampler weights, or for the base model when model_path is None."""

        def create() -> Any:
            if model_path:
                fut = self.service.create_sampling_client(model_path=model_path)
            else:
                fut = self.service.create_sampling_client(base_model=self.base_model())
            return fut.result(timeout=timeout) if hasattr(fut, "result") else fut

        return within(timeout, "creating a sampling client", service_url(self.base_url), create)

    def tokenizer(self, training_client: Any = None) -> Any:
        """The model's tokenizer: from the local directory when there is one, else through the SDK."""
        path = Path(self.cfg.model.tinker_base_model or "").expanduser()
        if path.is_dir():
            from transformers import AutoTokenizer  # ~1 s to import: only a local model directory needs it

            return AutoTokenizer.from_pretrained(str(path.resolve()))
        if training_client is None:
            raise BackendError("the tokenizer of a hub model is loaded through a training client")
        return training_client.get_tokenizer()


def _finish_service(service: Any, status: str, timeout: float = 10.0) -> None:
    """ServiceClient.close(status): tell the server the session is over and stop its background loops."""
    def finish() -> None:
        try:
            service.close(status).result(timeout=timeout)
        except Exception as exc:  # a dead server cannot finish the session; quiesce_sdk stops the rest at exit
            log.debug("could not finish the Tinker session: %s", exc)

    # close() itself waits for the session to exist: where nothing ever answered (a base_url where nothing
    # listens) it would wait forever, so it gets the same bound from a thread of its own
    closer = threading.Thread(target=finish, name="tinker-session-close", daemon=True)
    closer.start()
    closer.join(timeout)
    if closer.is_alive():
        log.debug("the Tinker session was not finished within %.0fs (the server never answered)", timeout)


def quiesce_sdk(settle_s: float = 0.2) -> None:
    """Stop the tinker SDK's background event loop: its tasks cancelled, its thread joined.

    The SDK sends its HTTP requests through pyqwest, whose Rust (tokio) threads call back into Python when
    a response arrives. If that happens while the interpreter finalises, CPython ends the calling thread
    with pthread_exit, which cannot unwind the Rust frames, and the process aborts (SIGABRT, exit 134,
    nothing printed) after everything else succeeded. Open sessions heartbeat every 10 s and retries keep
    polling, so this runs at exit (atexit) while threads can still finish: cancelling a request drops it on
    the Rust side, and once the loop is stopped nothing sends another.
    """
    # only an SDK that was imported can have a loop running; importing it here, at exit, would import torch
    # while the interpreter shuts down (its atexit hooks then fail, and its finalizers run on torn-down modules)
    holders = sys.modules.get("tinker.lib.internal_client_holder")
    if holders is None:
        return
    single = getattr(holders, "_internal_client_holder_thread_singleton", None)
    loop = single.loop_if_started() if single is not None else None
    thread = getattr(single, "_thread", None)
    if loop is None or not loop.is_running():
        return

    async def cancel_all() -> None:
        me = asyncio.current_task()
        # cleanup code of a cancelled task may start another (a cancel request, a semaphore release)
        for _ in range(10):
            tasks = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            if not tasks:
                return
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=2.0)

    try:
        asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(timeout=15)
    except Exception as exc:
        log.debug("tinker SDK tasks did not all stop: %s", exc)
    loop.call_soon_threadsafe(loop.stop)
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout=5)
    # a callback already on its way from a tokio thread gets the GIL while the interpreter is still whole
    time.sleep(settle_s)


# registered on import, so it runs before the interpreter finalises and after the program's own cleanup
atexit.register(quiesce_sdk)
