"""The explorer's thread: waits for the weights the synchronizer allows, samples a batch, hands it over.

It knows nothing of the trainer: `weights_for(step, first_step, activity)` says which weights to sample
each step with and `latest()` which are the newest (an Exchange in mode both, the job directory's published weights in mode explore), and
`deliver` takes each ExploredBatch (`finish` after the last, `fail` with the error that stopped it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from rft_runtime.backends.errors import BackendError, refusal_error, refused
from rft_runtime.data.pipeline import ExperiencePipeline
from rft_runtime.loop.errors import RunError
from rft_runtime.loop.explorer import ExploredBatch, Explorer, prompts_too_long_error
from rft_runtime.loop.trainer import MAX_RECOVERY_ATTEMPTS
from rft_runtime.workflows.runners import prompt_limit

log = logging.getLogger(__name__)


class ExplorerThread(threading.Thread):
    """Explores steps first_step .. last_step of `stream`, one ExploredBatch each."""

    def __init__(self, cfg: Any, conn: Any, encoder: Any, stream: Any, *, first_step: int, last_step: int,
                 weights_for: Callable[..., tuple[int, str | None]], latest: Callable[[], tuple[int, str | None]],
                 deliver: Callable[[ExploredBatch], None],
                 finish: Callable[[], None], fail: Callable[[BaseException], None], recovery_window: float,
                 trainer_activity: Callable[[], str] | None = None, stop_event: threading.Event | None = None):
        super().__init__(name="explorer", daemon=True)
        self.cfg = cfg
        self.conn = conn
        self.stream = stream
        self.first_step = first_step
        self.last_step = last_step
        self.weights_for = weights_for
        self.latest = latest
        self.deliver = deliver
        self.finish = finish
        self.fail = fail
        self.recovery_window = recovery_window
        self.trainer_activity = trainer_activity
        self.explorer = Explorer(cfg, encoder, conn=conn)
        # data_processor.experience_pipeline: between the explorer and the trainer (None: not configured)
        self.pipeline = ExperiencePipeline.for_stage(cfg, stream, encoder.decode)
        # whether any prompt of this stage has fit max_prompt_tokens yet (a job where none does must stop)
        self._some_prompt_fit = False
        self._stop_event = stop_event or threading.Event()
        self._sampler: Any = None
        self._sampler_key: tuple[int, str | None] | None = None
        # what the explorer is doing now, for the message of a stall the trainer detects
        self.activity = "starting"

    def stop(self, wake: Callable[[], None] | None = None) -> None:
        """Ask the thread to end after its current batch (`wake` rouses it from a wait), and wait briefly."""
        self._stop_event.set()
        if wake is not None:
            wake()
        self.join(timeout=5)
        self.explorer.close()

    def run(self) -> None:
        """Explore every step, with the weights weights_for allows."""
        try:
            it = iter(self.stream)
            for step in range(self.first_step, self.last_step + 1):
                self.activity = f"waiting for the weights to sample step {step}"
                version, path = self.weights_for(step, self.first_step, self.trainer_activity)
                if self._stop_event.is_set():
                    return
                try:
                    tasks = next(it)
                except StopIteration:
                    break
                stream_state = self.stream.state_dict()
                batch = self._explore(tasks, step, version, path)
                batch.stream_state = stream_state
                if self.pipeline is not None:
                    self.pipeline.apply(batch)
                self.activity = f"handing over the experiences of step {step}"
                self.deliver(batch)
                if self._stop_event.is_set():
                    return
            self.activity = "done: every step explored"
            self.finish()
        except BaseException as exc:  # handed to the trainer's side, which raises it
            self.activity = f"stopped by {type(exc).__name__}: {exc}"
            self.fail(exc)

    def _check_prompts(self, batch: ExploredBatch) -> None:
        if batch.sampled_prompts:
            self._some_prompt_fit = True
        elif batch.truncated_prompts and not self._some_prompt_fit:
            raise prompts_too_long_error(prompt_limit(self.cfg), batch.longest_truncated,
                                         where=f"explore step {batch.explore_step} (and none before it)")

    def _explore(self, tasks: list[Any], step: int, version: int, path: str | None) -> ExploredBatch:
        conn = self.conn
        timeout = float(self.cfg.synchronizer.sync_timeout)
        deadline = None
        attempts = 0
        t_sync = 0.0
        while True:
            generation = conn.generation
            self.activity = f"sampling step {step}"
            try:
                key = (generation, path)
                if self._sampler is None or self._sampler_key != key:
                    t0 = time.monotonic()
                    self._sampler = conn.sampling_client(path, timeout=timeout)
                    self._sampler_key = key
                    t_sync += time.monotonic() - t0
                batch = self.explorer.explore(tasks, self._sampler, step, model_version=max(version, 0),
                                              model_path=path)
                self._check_prompts(batch)
                batch.weight_version = version
                batch.time_sync_s = t_sync
                return batch
            except (BackendError, RunError) as exc:
                if isinstance(exc, RunError) and conn.generation != generation and attempts < MAX_RECOVERY_ATTEMPTS:
                    # its rollouts failed because the connection was replaced under them (the job's engine died
                    # and was started again): the step is sampled again on a new sampling client
                    attempts += 1
                    log.warning("explore step %d failed while the connection to the server was replaced (%s); "
                                "sampling it again (attempt %d)", step, exc, attempts)
                    self._sampler = None
                    continue
                raise
            except Exception as exc:
                if refused(exc):
                    raise refusal_error(f"sampling explore step {step}", exc) from exc
                attempts += 1
                now = time.monotonic()
                deadline = deadline or now + self.recovery_window
                if now > deadline or attempts > MAX_RECOVERY_ATTEMPTS:
                    raise BackendError(
                        f"sampling explore step {step} failed and the job could not recover within "
                        f"{self.recovery_window:.0f}s ({attempts} attempts): tried reconnecting to "
                        f"{conn.base_url or 'the Tinker service'} and recreating the sampling client for "
                        f"{path or 'the base model'}. Last error: {type(exc).__name__}: {exc}"
                    ) from exc
                log.warning("sampling step %d failed (%s: %s); reconnecting (attempt %d)", step,
                            type(exc).__name__, exc, attempts)
                self.activity = (f"reconnecting to {conn.base_url or 'the Tinker service'} after sampling step "
                                 f"{step} failed ({type(exc).__name__}: {exc}; attempt {attempts})")
                self._sampler = None
                conn.reconnect(generation, deadline)
                # the trainer may have published newer weights while the server was away
                newer, newer_path = self.latest()
                if newer >= version and newer_path:
                    version, path = newer, newer_path
