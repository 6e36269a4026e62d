"""A base_url where nothing listens ends the wait in about a minute, not after synchronizer.sync_timeout (an
hour by default); a server that is up but slow still gets the whole timeout."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from rft_runtime.backends import tinker_client
from rft_runtime.backends.errors import BackendError


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _block_forever() -> None:
    threading.Event().wait()


def test_nothing_listening_ends_the_wait_long_before_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tinker_client, "UNREACHABLE_GRACE_S", 2.0)
    monkeypatch.setattr(tinker_client, "PROBE_EVERY_S", 0.5)
    url = f"http://127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"nothing listens at http://127\.0\.0\.1:\d+") as err:
        tinker_client.within(3600, "creating the training client", url, _block_forever)
    assert time.monotonic() - start < 30
    assert "model.tinker.base_url" in str(err.value)


def test_a_server_that_accepts_but_does_not_answer_gets_the_whole_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tinker_client, "UNREACHABLE_GRACE_S", 0.5)
    monkeypatch.setattr(tinker_client, "PROBE_EVERY_S", 0.25)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(BackendError, match=r"did not finish within 3s") as err:
            tinker_client.within(3, "creating the training client", url, _block_forever)
        assert time.monotonic() - start >= 2.9
        assert "nothing listens" not in str(err.value)


def test_the_call_result_comes_back_when_it_finishes() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    assert tinker_client.within(10, "creating a sampling client", url, lambda: 42) == 42
