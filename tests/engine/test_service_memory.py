"""The engine's compute loop keeps freed memory while work keeps coming and hands it back once idle
(memory.keep_freed / service.IDLE_RELEASE_S)."""

from __future__ import annotations

import threading
import time

from rft_runtime.engine import memory, service


def test_freed_memory_is_handed_back_once_idle_and_not_between_calls(monkeypatch):
    # the release itself (malloc_trim) has no effect a test could see apart from the process's RSS, which other
    # work moves as well: counted instead
    releases: list[float] = []
    monkeypatch.setattr(memory, "release", lambda: releases.append(time.perf_counter()))
    monkeypatch.setattr(service, "IDLE_RELEASE_S", 0.4)
    svc = service.Service(engine=None, api_key=None)
    loop = threading.Thread(target=svc.run, daemon=True)
    loop.start()
    try:
        ids = [svc.submit("forward_backward", lambda: time.sleep(0.2) or {})["request_id"] for _ in range(3)]
        for rid in ids:
            assert svc.retrieve(rid).done.wait(10)
        finished = time.perf_counter()
        assert releases == []  # back-to-back calls reuse what the one before freed
        time.sleep(1.2)
        assert len(releases) == 1 and releases[0] - finished >= 0.3  # idle: once, and only after the wait
        assert svc.retrieve(svc.submit("optim_step", lambda: {})["request_id"]).done.wait(10)
        time.sleep(1.0)
        assert len(releases) == 2
    finally:
        svc.work.stop()
        loop.join(10)
