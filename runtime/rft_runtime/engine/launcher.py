"""LocalEngine: run `rft engine serve` as a child process and know when it is ready.

    eng = LocalEngine(model_dir, state_dir=None, port=0, api_key="tml-local", log_file=None).start(timeout=60)
    eng.base_url, eng.pid, eng.stop(), eng.restart()   # restart keeps the port and the state dir

Nothing is left in the temp folder once it is done: the port file's folder goes when the engine stops,
and the folder holding a default state dir or log (none given) when the `with` block ends or close() runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

LOCAL_API_KEY = "tml-local"
# set for the child: the port file's folder is its own, so it removes it when it exits (its launcher may
# have been SIGKILLed and cannot)
PORT_DIR_ENV = "RFT_ENGINE_OWN_PORT_DIR"


class EngineStartError(RuntimeError):
    """The engine process exited or did not become healthy in time; the message carries its log's tail."""


class LocalEngine:
    """A `rft engine serve` child process bound to 127.0.0.1 (or `host`: a node address Ray runners on other
    machines can reach)."""

    def __init__(self, model_dir: str | Path, state_dir: str | Path | None = None, port: int = 0,
                 api_key: str | None = LOCAL_API_KEY, log_file: str | Path | None = None,
                 log_level: str = "info", extra_args: list[str] | None = None, host: str = "127.0.0.1"):
        self.host = host
        self.model_dir = Path(model_dir).expanduser().resolve()
        # a folder of our own only for what the caller did not place: it outlives restarts, not close()
        self._own_tmp = tempfile.mkdtemp(prefix="rft-engine-") if not (state_dir and log_file) else None
        self.state_dir = Path(state_dir).expanduser().resolve() if state_dir else Path(self._own_tmp) / "state"
        self.port = int(port)
        self.api_key = api_key
        self.log_file = Path(log_file).expanduser().resolve() if log_file else Path(self._own_tmp) / "engine.log"
        self._port_dir: Path | None = None
        self.log_level = log_level
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None  # exit status of the last stopped process

    @property
    def base_url(self) -> str:
        """http://HOST:PORT (valid once started)."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The engine process id, or None when not started."""
        return self.proc.pid if self.proc is not None else None

    def command(self, port_file: Path) -> list[str]:
        """The command line of the child process."""
        cmd = [sys.executable, "-m", "rft_runtime.cli", "engine", "serve", "--model", str(self.model_dir),
               "--host", self.host, "--port", str(self.port), "--state-dir", str(self.state_dir),
               "--port-file", str(port_file), "--log-level", self.log_level]
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        return cmd + self.extra_args

    def start(self, timeout: float = 60) -> LocalEngine:
        """Start the process and wait until /healthz answers; raises EngineStartError (process stopped)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._remove_port_dir()
        self._port_dir = Path(tempfile.mkdtemp(prefix="rft-engine-port-"))
        port_file = self._port_dir / "port"
        env = dict(os.environ)
        env[PORT_DIR_ENV] = "1"
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["RFT_ENGINE_PARENT_PID"] = str(os.getpid())  # so a SIGKILLed launcher leaves no engine behind
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(self.command(port_file), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    raise EngineStartError(f"the engine exited with code {self.proc.returncode} while starting:\n"
                                           + self.log_tail())
                if port_file.exists():
                    text = port_file.read_text().strip()
                    if text:
                        self.port = int(text)
                        if self.healthy():
                            return self
                if time.monotonic() > deadline:
                    raise EngineStartError(f"the engine did not become healthy within {timeout:.0f}s:\n"
                                           + self.log_tail())
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def healthy(self, timeout: float = 2.0) -> bool:
        """True when GET /healthz answers ok."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/api/v1/healthz", timeout=timeout) as resp:
                return json.loads(resp.read() or b"{}").get("status") == "ok"
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the engine's log file."""
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM the process (SIGKILL after timeout) and reap it; safe to call twice or after a crash."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=timeout)
        else:
            proc.wait()
        self.returncode = proc.returncode
        self._remove_port_dir()

    def _remove_port_dir(self) -> None:
        if self._port_dir is not None:
            shutil.rmtree(self._port_dir, ignore_errors=True)
            self._port_dir = None

    def close(self) -> None:
        """Stop the engine and remove the temp folder holding a default state dir and log, if any."""
        self.stop()
        if self._own_tmp is not None:
            shutil.rmtree(self._own_tmp, ignore_errors=True)
            self._own_tmp = None

    def restart(self, timeout: float = 60) -> LocalEngine:
        """Stop (if running) and start again on the same port with the same state dir."""
        self.stop()
        return self.start(timeout=timeout)

    def ensure_running(self, timeout: float = 60) -> LocalEngine:
        """Restart (same port and state dir) if the process has died; a no-op while it runs."""
        if self.proc is None or self.proc.poll() is not None:
            self.restart(timeout=timeout)
        return self

    def __enter__(self) -> LocalEngine:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
        except Exception:  # interpreter shutdown: nothing sensible left to do
            pass
