"""The reconcile queue's promises: one pass per job at a time, wake-ups merged, a wake-up during a pass runs
it again after, resync times kept, forgotten jobs not handed out, and nothing while paused."""

from __future__ import annotations

import asyncio

import pytest

from rft_operator.workqueue import WorkQueue


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


async def next_key(queue: WorkQueue, within: float = 1.0):
    try:
        return await asyncio.wait_for(queue.get(), within)
    except TimeoutError:
        return None


def test_wake_ups_before_a_jobs_turn_are_one_pass_and_the_earliest_time_wins():
    async def main():
        q = WorkQueue()
        q.add("a", delay=5)
        q.add("a")
        q.add("a")
        assert await next_key(q) == "a"
        q.done("a", None)
        assert await next_key(q, 0.2) is None

    run(main())


def test_a_job_is_never_handed_out_twice_at_once_and_a_wake_up_during_its_pass_runs_it_again():
    async def main():
        q = WorkQueue()
        q.add("a")
        assert await next_key(q) == "a"
        q.add("a")  # woken while being worked on
        assert await next_key(q, 0.2) is None  # not a second time at once
        q.done("a", next_in=60)
        assert await next_key(q) == "a"  # right after, not at the resync

    run(main())


def test_the_resync_brings_a_job_back_and_earlier_due_jobs_come_first():
    async def main():
        q = WorkQueue()
        q.add("late", delay=0.3)
        q.add("now")
        assert await next_key(q) == "now"
        q.done("now", next_in=0.6)
        assert await next_key(q) == "late"
        q.done("late", None)
        assert await next_key(q) == "now"

    run(main())


def test_a_forgotten_job_is_not_handed_out_even_if_it_was_being_worked_on():
    async def main():
        q = WorkQueue()
        q.add("gone", delay=0.1)
        q.forget("gone")
        assert await next_key(q, 0.3) is None
        q.add("busy")
        assert await next_key(q) == "busy"
        q.forget("busy")
        q.done("busy", next_in=0.1)
        assert await next_key(q, 0.3) is None
        q.add("busy")  # created again under the same name
        assert await next_key(q) == "busy"

    run(main())


@pytest.mark.parametrize("workers", [1, 4])
def test_nothing_is_handed_out_while_paused_and_everything_after(workers):
    async def main():
        q = WorkQueue()
        q.pause()
        for key in "abc":
            q.add(key)
        seen: list[str] = []

        async def worker():
            while True:
                key = await q.get()
                seen.append(key)
                q.done(key, None)

        tasks = [asyncio.create_task(worker()) for _ in range(workers)]
        await asyncio.sleep(0.2)
        assert seen == []
        q.resume()
        for _ in range(50):
            if len(seen) == 3:
                break
            await asyncio.sleep(0.02)
        for task in tasks:
            task.cancel()
        assert sorted(seen) == ["a", "b", "c"]

    run(main())
