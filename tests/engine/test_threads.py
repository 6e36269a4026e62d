"""The engine's thread tuner: work runs on whichever thread count has been faster, and follows a change."""

from __future__ import annotations

import time

import torch

from rft_runtime.engine.threads import FIRST_GAP, ThreadTuner


def test_the_tuner_moves_to_the_faster_thread_count_and_back():
    before = torch.get_num_threads()
    slow = {"threads": 2}

    def work() -> int:
        time.sleep(0.02 if torch.get_num_threads() == slow["threads"] else 0.001)  # the work's own cost
        return torch.get_num_threads()

    try:
        tuner = ThreadTuner(2, fixed=False)
        used = [tuner.run("decode", work) for _ in range(3 * FIRST_GAP)]
        assert used[0] == 2 and used[-1] == 1  # two threads were slower: one took over after a probe
        slow["threads"] = 1  # the machine quietened: two threads are faster again
        used = [tuner.run("decode", work) for _ in range(6 * FIRST_GAP)]
        assert used[-1] == 2
        fixed = ThreadTuner(2, fixed=True)
        assert {fixed.run("decode", work) for _ in range(3 * FIRST_GAP)} == {2}
    finally:
        torch.set_num_threads(before)
