"""The trainer side: one forward_backward + optim_step per step, sampler weights, checkpoints, recovery.

The SDK refuses every call on a training client after one request failed, so a failure is handled by
building a new client from the last saved state and redoing, from memory, the steps trained since. The
job fails only when that has not worked within the recovery window, with a message saying what was tried.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from rft_runtime.backends.errors import BackendError, refusal_error, refused
from rft_runtime.backends.tinker_client import ENGINE_CHECK_S, Connection, EngineExited, service_url, within
from rft_runtime.config import JobConfig

log = logging.getLogger(__name__)

MAX_RECOVERY_ATTEMPTS = 8


@dataclass
class StepWork:
    """What one train step sends: datums, the loss and the learning rate (kept to redo the step)."""

    step: int
    datums: list[Any]
    loss_name: str
    loss_config: dict[str, Any] | None
    lr: float
    custom_loss: Any = None
    # Trinity's actor metrics from the logprobs a built-in forward_backward returns (None: not computed)
    metrics_fn: Any = None


@dataclass
class StepResult:
    """What came back from a train step."""

    loss: float
    metrics: dict[str, float] = field(default_factory=dict)
    time_training_s: float = 0.0


def deterministic(exc: BaseException) -> bool:
    """True for errors raised on this machine that a retry cannot change: the SDK's own argument checks
    (AssertionError, TypeError, ValueError, e.g. a malformed API key) or a bug in a loss function."""
    if not isinstance(exc, (AssertionError, TypeError, ValueError, AttributeError, KeyError, IndexError,
                            NotImplementedError, ImportError)):
        return False
    # the SDK wraps what the server answered while it polled a future in a ValueError ("Error retrieving
    # result: Error code: 404 ... unknown request_id" after an engine restart): the server's word, which a
    # reconnect can change
    seen: BaseException | None = exc
    while seen is not None:
        if getattr(seen, "status_code", None) is not None or str(seen).startswith("Error retrieving result"):
            return False
        seen = seen.__cause__ or seen.__context__
    return True


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tensor_values(value: Any) -> list[float]:
    # a TensorData from the SDK, or a plain list from a server that sends one
    data = getattr(value, "data", value)
    return [float(x) for x in data]


class Trainer:
    """Owns the training client of a job and keeps it alive across server failures."""

    def __init__(self, cfg: JobConfig, conn: Connection, recovery_window_s: float | None = None):
        self.cfg = cfg
        self.conn = conn
        self.client: Any = None
        self.generation = -1
        # the state a new client is built from, and whether it carries the optimizer too
        self.base_state: str | None = None
        self.base_with_optimizer = True
        self.redo: list[StepWork] = []
        self.run_tag = uuid.uuid4().hex[:8]
        self._recovery_override = recovery_window_s
        # what the trainer is doing now, for the message of a stall the explorer detects
        self.activity = "starting"
        self._warned_no_loss = False
        self.configure(cfg)

    def configure(self, cfg: JobConfig) -> None:
        """Take a stage's optimizer, clipping and timeouts (the client and its weights carry over)."""
        self.cfg = cfg
        self.call_timeout = float(cfg.synchronizer.sync_timeout)
        self.recovery_window = float(self._recovery_override or min(cfg.synchronizer.sync_timeout, 600))
        opt = cfg.algorithm.optimizer
        self.adam = dict(beta1=opt.betas[0], beta2=opt.betas[1], eps=opt.eps, weight_decay=opt.weight_decay,
                         grad_clip_norm=cfg.trainer.grad_clip)

    # ------------------------------------------------------------ client lifecycle

    def start(self, state_path: str | None, with_optimizer: bool = True) -> None:
        """Create the training client: fresh, from a checkpoint, or (between stages) from weights only."""
        self.base_state = state_path
        self.base_with_optimizer = with_optimizer
        self.redo = []
        self._guarded("creating the training client", lambda: None)

    def _make_client(self) -> None:
        if self.client is not None or self.generation >= 0:
            log.warning("recreating the training client from %s and redoing %d step(s) trained since "
                        "(the connection to the server was replaced)", self.base_state or "a fresh adapter",
                        len(self.redo))
        self.generation = self.conn.generation
        if self.base_state and not self.base_with_optimizer:
            state = self.base_state
            self.client = within(
                self.call_timeout, "creating the training client", service_url(self.conn.base_url),
                lambda: self.conn.service.create_training_client_from_state(state).result(timeout=self.call_timeout))
        else:
            self.client = self.conn.training_client(self.base_state, timeout=self.call_timeout)
        for work in self.redo:
            self._run(work)

    def _guarded(self, what: str, action: Any) -> Any:
        """Run `action` on a live client; on failure reconnect, rebuild, redo, and try again (bounded)."""
        deadline = None
        attempts = 0
        started = time.monotonic()
        url = service_url(self.conn.base_url)
        while True:
            try:
                self.activity = what if not attempts else f"recovering from a failure of {what} (attempt {attempts})"
                if self.client is None or self.generation != self.conn.generation:
                    self._make_client()
                result = action()
                self.activity = f"done {what}"
                return result
            except BackendError:
                raise
            except Exception as exc:
                if refused(exc):
                    raise refusal_error(what, exc) from exc
                if deterministic(exc):
                    raise BackendError(
                        f"{what} failed with {type(exc).__name__}: {exc} (server {url}). This error comes from "
                        "this machine (the SDK or the loss code rejected the request), so retrying cannot "
                        "change it; the job stops without retrying"
                    ) from exc
                attempts += 1
                now = time.monotonic()
                deadline = deadline or now + self.recovery_window
                if now > deadline or attempts > MAX_RECOVERY_ATTEMPTS:
                    source = (f"the saved state {self.base_state}" if self.base_state
                              else "a fresh adapter (no checkpoint had been saved yet)")
                    why = (f"the recovery window of {self.recovery_window:.0f}s ran out" if now > deadline
                           else f"{attempts} attempts failed (at most {MAX_RECOVERY_ATTEMPTS} retries)")
                    raise BackendError(
                        f"{what} failed and the job gave up after {now - started:.0f}s: {why}. Tried "
                        f"reconnecting to {url}, recreating the training client from {source}, and redoing "
                        f"the {len(self.redo)} step(s) trained since. Last error: {type(exc).__name__}: {exc}"
                    ) from exc
                log.warning("%s failed (%s: %s); reconnecting to %s and rebuilding the training client from %s "
                            "(attempt %d)", what, type(exc).__name__, exc, url, self.base_state or "scratch",
                            attempts)
                self.client = None
                self.conn.reconnect(self.generation, deadline)

    # ------------------------------------------------------------ steps

    def _wait(self, fut: Any) -> Any:
        """fut.result() within call_timeout; a local engine that stops meanwhile ends the wait at once (the
        SDK would poll a dead port until the timeout), as does a replaced connection (the engine started
        again: it does not know this request), with an EngineExited, which _guarded recovers from."""
        deadline = time.monotonic() + self.call_timeout
        while True:
            left = deadline - time.monotonic()
            try:
                return fut.result(timeout=max(0.0, min(ENGINE_CHECK_S, left)))
            except TimeoutError:
                if left <= ENGINE_CHECK_S:
                    raise
                why = self.conn.engine_exit()
                if why is None and self.generation != self.conn.generation:
                    why = "the connection to the server was replaced while this request was in flight"
                if why is not None:
                    raise EngineExited(why) from None

    def _run(self, work: StepWork) -> StepResult:
        import tinker  # the SDK imports torch: see loop/datums.py

        start = time.monotonic()
        if work.custom_loss is not None:
            fb = self.client.forward_backward_custom(work.datums, work.custom_loss)
        else:
            fb = self.client.forward_backward(work.datums, work.loss_name, loss_fn_config=work.loss_config)
        # calls on one client run in submission order: queue the optimizer step before waiting
        opt = self.client.optim_step(tinker.AdamParams(learning_rate=work.lr, **self.adam))
        out = self._wait(fb)
        opt_out = self._wait(opt)
        metrics = {k: float(v) for k, v in (out.metrics or {}).items() if _number(v)}
        if work.metrics_fn is not None:
            logprobs = [o["logprobs"] for o in (out.loss_fn_outputs or []) if "logprobs" in o]
            if len(logprobs) == len(work.datums):
                metrics.update(work.metrics_fn([_tensor_values(lp) for lp in logprobs]))
        loss = metrics.get("loss:sum")
        if loss is None:
            loss = metrics.get("actor/final_loss", metrics.get("actor/pg_loss"))
            if not self._warned_no_loss:
                self._warned_no_loss = True
                log.warning("the server at %s returned no loss metric (loss:sum) from forward_backward; %s",
                            self.conn.base_url or "the Tinker service",
                            "the loss is computed on this machine from the logprobs it returned"
                            if loss is not None else "the logged loss is unknown (no logprobs came back either)")
        for key, value in (getattr(opt_out, "metrics", None) or {}).items():
            if _number(value):
                metrics[f"optim/{key}"] = float(value)
        return StepResult(loss=float(loss or 0.0), metrics=metrics, time_training_s=time.monotonic() - start)

    def train(self, work: StepWork) -> StepResult:
        """Train one step (exactly once, even across a recovery)."""
        if not work.datums:
            # nothing to learn from (e.g. every group had equal rewards): the weights stay as they are
            return StepResult(loss=0.0)
        result = self._guarded(f"train step {work.step}", lambda: self._run(work))
        self.redo.append(work)
        return result

    def save_sampler(self, label: str) -> str:
        """Save weights for the sampler under a unique name; returns the tinker:// path."""
        name = f"{label}-{self.run_tag}-g{self.conn.generation}"
        return self._guarded(
            f"saving sampler weights {name}",
            lambda: self._wait(self.client.save_weights_for_sampler(name)).path,
        )

    def save_state(self, label: str) -> str:
        """Save weights and optimizer state; later recoveries start from here."""
        name = f"{label}-{self.run_tag}-g{self.conn.generation}"
        path = self._guarded(
            f"saving checkpoint {name}",
            lambda: self._wait(self.client.save_state(name)).path,
        )
        self.base_state = path
        self.base_with_optimizer = True
        self.redo = []
        return path
