"""The explorer's thread in mode both: waits for allowed weights, samples a batch, hands it to the trainer."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from rft_runtime.backends.errors import BackendError, refusal_error, refused
from rft_runtime.data.pipeline import ExperiencePipeline
from rft_runtime.loop.errors import RunError
from rft_runtime.loop.explorer import ExploredBatch, Explorer, prompts_too_long_error
from rft_runtime.loop.sync import WeightBoard, required_version
from rft_runtime.loop.trainer import MAX_RECOVERY_ATTEMPTS

if TYPE_CHECKING:
    from rft_runtime.loop.stage import StageRunner

log = logging.getLogger(__name__)


class ExplorerThread(threading.Thread):
    """Produces ExploredBatch objects (or the exception that stopped it) on `out`, one per explore step."""

    def __init__(self, runner: StageRunner, board: WeightBoard, out: queue.Queue[Any], start_step: int):
        super().__init__(name="explorer", daemon=True)
        self.runner = runner
        self.board = board
        self.out = out
        self.start_step = start_step
        self.explorer = Explorer(runner.cfg, runner.encoder, conn=runner.conn)
        # data_processor.experience_pipeline: between the explorer and the trainer (None: not configured)
        self.pipeline = ExperiencePipeline.for_stage(runner.cfg, runner.stream, runner.encoder.decode)
        # whether any prompt of this stage has fit max_prompt_tokens yet (a job where none does must stop)
        self._some_prompt_fit = False
        self._stop_event = threading.Event()
        self._sampler: Any = None
        self._sampler_key: tuple[int, str | None] | None = None
        # what the explorer is doing now, for the message of a stall the trainer detects
        self.activity = "starting"

    def stop(self) -> None:
        """Ask the thread to end after its current batch, and wait briefly for it."""
        self._stop_event.set()
        self.board.close()
        self.join(timeout=5)
        self.explorer.close()

    def run(self) -> None:
        """Explore steps start_step+1 .. total, honouring the synchronizer's offset."""
        cfg = self.runner.cfg
        sync = cfg.synchronizer
        try:
            it = iter(self.runner.stream)
            for step in range(self.start_step + 1, self.runner.total + 1):
                need = required_version(step, sync.sync_offset, sync.sync_interval, self.start_step)
                self.activity = f"waiting for the weights of train step {need} to sample step {step}"
                version, path = self.board.wait_for(need, float(sync.sync_timeout), step,
                                                    lambda: self.runner.trainer.activity)
                if self._stop_event.is_set():
                    return
                try:
                    tasks = next(it)
                except StopIteration:
                    self.out.put(None)
                    return
                stream_state = self.runner.stream.state_dict()
                batch = self._explore(tasks, step, version, path)
                batch.stream_state = stream_state
                if self.pipeline is not None:
                    self.pipeline.apply(batch)
                self.out.put(batch)
        except BaseException as exc:  # handed to the trainer's thread, which raises it
            self.out.put(exc)

    def _check_prompts(self, batch: ExploredBatch) -> None:
        if batch.sampled_prompts:
            self._some_prompt_fit = True
        elif batch.truncated_prompts and not self._some_prompt_fit:
            raise prompts_too_long_error(self.runner.cfg.model.max_prompt_tokens, batch.longest_truncated,
                                         where=f"explore step {batch.explore_step} (and none before it)")

    def _explore(self, tasks: list[Any], step: int, version: int, path: str | None) -> ExploredBatch:
        conn = self.runner.conn
        timeout = float(self.runner.cfg.synchronizer.sync_timeout)
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
            except (BackendError, RunError):
                raise
            except Exception as exc:
                if refused(exc):
                    raise refusal_error(f"sampling explore step {step}", exc) from exc
                attempts += 1
                now = time.monotonic()
                deadline = deadline or now + self.runner.trainer.recovery_window
                if now > deadline or attempts > MAX_RECOVERY_ATTEMPTS:
                    raise BackendError(
                        f"sampling explore step {step} failed and the job could not recover within "
                        f"{self.runner.trainer.recovery_window:.0f}s ({attempts} attempts): tried reconnecting to "
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
                if self.board.version >= version and self.board.path:
                    version, path = self.board.version, self.board.path
