"""Workflow runners as Ray actors: the explorer's CPU work (workflows, rewards, environments) spread over a
Ray cluster's nodes, as Trinity-RFT runs `explorer.runner_per_model x rollout_model.engine_num` of them.

Each runner actor holds its own LocalRunners (workflows.runners: the run path the explorer uses in process),
tokenizer and tinker SDK ServiceClient on the job's endpoint, with a sampling client for the weights the task
names (re-pointed when the trainer publishes new sampler weights or the driver reconnects). It runs one task
at a time; the driver hands tasks to idle runners and puts each outcome back in its batch slot, so batch
order, Task.task_id and the per-task seeds (run_batch's formula of explore step and row index) are the same
whichever runner ran a task, and the same as in-process. A runner that dies (its node lost, its raylet killed)
is replaced by a new one on another node and the task it had is run again, up to explorer.max_retry_times
times: an outcome comes back once or not at all, so no rollout is lost or counted twice. A workflow that
raises is handled inside the runner as in process (a failed rollout); the driver logs it once per job through
its own ErrorOnce.

Where Ray comes from (`RaySession.open`): RAY_ADDRESS, else cluster.ray_address when it is not 'auto', is
the cluster to join (a KubeRay RayCluster, the job's head pod); 'auto' joins a cluster `ray start` runs on
this machine, else starts one in this process with the machine's CPUs, stopped when the job ends.
Whether the explorer uses Ray at all is workflows.placement's `runners_on_ray`. Importing this module imports
ray (a quarter of a second or more): import it only where the runners are on Ray.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import tinker

import rft_runtime
from rft_runtime.backends.tinker_client import _finish_service, quiesce_sdk
from rft_runtime.workflows import trinity_compat
from rft_runtime.workflows.placement import MODE_VAR, RunnerError, cluster_named, set_ray_session
from rft_runtime.workflows.plugins import LOADED
from rft_runtime.workflows.registry import get_workflow, split_import_path
from rft_runtime.workflows.runner import Pace, TaskOutcome
from rft_runtime.workflows.runners import LocalRunners

try:
    import ray
    import ray.exceptions
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ImportError:  # RaySession.open says how to install it
    ray = None

log = logging.getLogger(__name__)

# Seconds the driver waits for the runner actors to start (imports, tokenizer, the first ServiceClient)
ACTOR_START_S = 300.0


# ---------------------------------------------------------------- the session


def _user_code_paths(cfg: Any) -> list[str]:
    """Files and folders of user code the runners must import on other nodes: the plugin folders' modules
    and the top-level module of every workflow / reward function named by import path, unless installed."""
    paths: list[Path] = []
    for folder, _ in LOADED:
        paths += [p for p in sorted(folder.iterdir())
                  if (p.suffix == ".py" and not p.name.startswith("__")) or (p / "__init__.py").is_file()]
    modules = []
    for stage in cfg.stage_configs():
        ei = stage.buffer.explorer_input
        for ts in [ei.taskset, *ei.tasksets, *ei.eval_tasksets]:
            name = ts.default_workflow_type or ei.default_workflow_type or "math_workflow"
            try:
                modules.append(get_workflow(name).__module__)
            except Exception:  # a bad name fails the job's own checks with its message
                continue
            reward = ts.default_reward_fn_type or ei.default_reward_fn_type
            split = split_import_path(reward) if isinstance(reward, str) else None
            if split:
                modules.append(split[0])
    for module in modules:
        top = sys.modules.get(module.split(".")[0])
        file = getattr(top, "__file__", None)
        if top is None or not file or top.__name__ in ("rft_runtime", "trinity", "__main__"):
            continue
        path = Path(file).resolve()
        if any(part in ("site-packages", "dist-packages") for part in path.parts) or \
                str(path).startswith(sys.base_prefix):
            continue  # installed: the image on every node has it
        path = path.parent if path.name == "__init__.py" else path
        if path not in paths:
            paths.append(path)
    return [str(p) for p in paths]


class RaySession:
    """This process's connection to Ray for one job: joined, or a local Ray it started (and stops)."""

    def __init__(self, started_here: bool, address: str, why: str):
        self.started_here = started_here
        self.address = address
        self.why = why

    @classmethod
    def open(cls, cfg: Any) -> RaySession:
        """Join the named cluster, else a local `ray start` one, else start Ray here with this machine's CPUs."""
        if ray is None:
            raise RunnerError("the workflow runners run on Ray (RFT_RAY, RAY_ADDRESS or the cluster section), and "
                              "ray is not installed: `pip install 'ray[default]>=2.40'` (the runtime extra has it), "
                              f"or set {MODE_VAR}=0 to run them in this process")
        named = cluster_named(cfg)
        address = os.environ.get("RAY_ADDRESS") or (cfg.cluster.ray_address if named and not
                                                    named.startswith("cluster.node_num") else "auto")
        # the runners run this process's rft_runtime and user code, whatever the nodes have installed
        runtime_env = {"py_modules": [str(Path(rft_runtime.__file__).parent), *_user_code_paths(cfg)],
                       "excludes": ["__pycache__", "*.pyc"],
                       # explorer.env_vars: Trinity's environment of its runner actors
                       "env_vars": {"TINKER_TELEMETRY": os.environ.get("TINKER_TELEMETRY", "0"),
                                    "TOKENIZERS_PARALLELISM": "false",
                                    **{str(k): str(v) for k, v in
                                       (getattr(cfg.explorer, "env_vars", None) or {}).items()}}}
        common = {"runtime_env": runtime_env, "logging_level": logging.WARNING, "configure_logging": False}
        started = False
        if named or address != "auto":
            try:
                ray.init(address=address, **common)
            except Exception as exc:
                hint = ("no Ray cluster runs on this machine: set RAY_ADDRESS to the head's address, or "
                        "`ray start --head` first" if address == "auto" else
                        f"check that its head is up (`ray status --address {address}`)")
                raise RunnerError(f"could not join the Ray cluster at {address} ({named or 'RAY_ADDRESS'}): "
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; {hint}, "
                                  "or unset it to run the workflows in this process") from exc
            why = f"joined the Ray cluster at {address} ({named})"
        else:
            try:
                ray.init(address="auto", **common)
                why = "joined the Ray cluster `ray start` runs on this machine"
            except ConnectionError:
                cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
                ray.init(num_cpus=cpus, include_dashboard=False, **common)
                started, why = True, f"started a local Ray with {cpus} CPUs"
        session = cls(started, ray.get_runtime_context().gcs_address, why)
        set_ray_session(session)
        log.info("workflow runners on Ray: %s", why)
        return session

    def engine_host(self) -> str:
        """The address the local engine must listen on: loopback for a Ray started here (every runner is on
        this machine), else this node's address, which runners on the other nodes can reach."""
        if self.started_here:
            return "127.0.0.1"
        return ray.util.get_node_ip_address()

    def close(self) -> None:
        """Disconnect (a joined cluster keeps running) or stop the local Ray this session started."""
        set_ray_session(None)
        if ray.is_initialized():
            ray.shutdown()


# ---------------------------------------------------------------- the runner actor


class _RunnerConnection:
    """The runner's own ServiceClient on the job's endpoint; `generation` follows the driver's reconnects."""

    def __init__(self, base_url: str | None, api_key: str, base_model: str):
        self.base_url = base_url
        self.api_key = api_key
        self.base_model = base_model
        self.service: Any = None
        self.generation = -1

    def point(self, generation: int) -> None:
        """A new ServiceClient when the driver reconnected since the last task."""
        if self.service is not None and self.generation == generation:
            return
        self.close()
        self.service = tinker.ServiceClient(base_url=self.base_url, api_key=self.api_key)
        self.generation = generation

    def sampling_client(self, model_path: str | None, timeout: float) -> Any:
        """A sampling client for sampler weights, or the base model when model_path is None."""
        if model_path:
            fut = self.service.create_sampling_client(model_path=model_path)
        else:
            fut = self.service.create_sampling_client(base_model=self.base_model)
        return fut.result(timeout=timeout) if hasattr(fut, "result") else fut

    def close(self) -> None:
        """Finish the session, so the SDK's heartbeat stops."""
        service, self.service = self.service, None
        if service is not None:
            _finish_service(service, "success")


class RunnerActor:
    """One workflow runner (a Ray actor): runs one task of a batch at a time through its own LocalRunners, with
    the weights it is told."""

    def __init__(self, cfg: Any, tasksets: list[Any], tokenizer_box: list[Any], chat_template: str | None,
                 enable_thinking: bool | None, base_url: str | None, api_key: str, base_model: str,
                 plugin_modules: list[str], runner_id: int):
        os.environ.setdefault("TINKER_TELEMETRY", "0")
        trinity_compat.install()
        for name in plugin_modules:  # their register_module decorators name workflows and rewards
            importlib.import_module(name)
        self.cfg = cfg
        self.runner_id = runner_id
        self.conn = _RunnerConnection(base_url, api_key, base_model)
        # quiet: the driver logs the outcome's user errors once per job, not once per actor
        self.runners = LocalRunners(cfg, tasksets, ray.get(tokenizer_box[0]), chat_template=chat_template,
                                    enable_thinking=enable_thinking, conn=self.conn, quiet=True)
        self._sampler: Any = None
        self._key: tuple[int, str | None] | None = None

    def where(self) -> dict[str, str]:
        """The node this runner is on (its Ray node id and address)."""
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "ip": ray.util.get_node_ip_address(), "pid": str(os.getpid())}

    def run(self, slot: int, task: Any, explore_step: int, repeat: int, greedy: bool, version: int,
            path: str | None, generation: int, run_timeout: float | None = None) -> tuple[TaskOutcome, dict[str, str]]:
        """Run one task's workflow repeat times; its TaskOutcome (slot: its place in the batch) and the node.
        `run_timeout`: seconds a run may take (explorer.dynamic_timeout's; None: explorer.max_timeout)."""
        timeout = float(self.cfg.synchronizer.sync_timeout)
        self.conn.point(generation)
        if self._sampler is None or self._key != (generation, path):
            self._sampler = self.conn.sampling_client(path, timeout)
            self._key = (generation, path)
        [outcome] = self.runners.run([task], self._sampler, explore_step=explore_step, repeat=repeat,
                                     greedy=greedy, version=version, path=path, in_flight=1, slots=[slot],
                                     timeout=run_timeout)
        return outcome, self.where()

    def close(self) -> None:
        """Finish the tinker session and stop the loopback OpenAI endpoint before the actor is killed."""
        self.runners.close()
        self.conn.close()
        quiesce_sdk(settle_s=0.0)


# ---------------------------------------------------------------- the pool


def _actor_died(exc: BaseException) -> bool:
    """Ray's errors for a runner (or its node) that went away, as opposed to an error its code raised."""
    kinds = tuple(k for k in (getattr(ray.exceptions, n, None) for n in (
        "RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError",
        "ObjectLostError", "OwnerDiedError", "LocalRayletDiedError", "ActorUnschedulableError")) if k)
    return isinstance(exc, kinds)


def _wait_for_nodes(expected: int, timeout: float = ACTOR_START_S) -> list[str]:
    """Ids of the cluster's alive nodes, once there are cluster.node_num of them (worker pods join after the
    head starts the job); after `timeout` with fewer, the runners go on the nodes there are, with a warning."""
    deadline = time.monotonic() + timeout
    said = False
    while True:
        alive = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))
        if len(alive) >= expected or time.monotonic() > deadline:
            if len(alive) < expected:
                log.warning("cluster.node_num is %d but the Ray cluster has %d node(s) after %.0fs; the workflow "
                            "runners start on those", expected, len(alive), timeout)
            return alive
        if not said:
            log.info("waiting for the Ray cluster to have cluster.node_num (%d) nodes; it has %d", expected,
                     len(alive))
            said = True
        time.sleep(1.0)


class RunnerPool:
    """RunnerActors spread over the cluster's nodes, as many as `local` runs at once, and the dispatch of a
    batch's tasks to them. Each actor runs what `local` (the driver's LocalRunners) would run; `local` logs
    the user errors of their outcomes."""

    def __init__(self, cfg: Any, local: LocalRunners, conn: Any):
        self.cfg = cfg
        self.conn = conn
        self.local = local
        self.size = size = local.in_flight
        self.retries = int(cfg.explorer.max_retry_times)
        # Trinity's bound on a task: max_timeout for each of its tries
        self.task_bound = float(cfg.explorer.max_timeout) * (self.retries + 1)
        self._closed = threading.Event()
        self._busy = threading.Lock()
        # refs of late tasks (over_rollout) still running on their runner -> that runner's index
        self._draining: dict[Any, int] = {}
        self._remote = ray.remote(RunnerActor)
        # in a list, so that Ray hands the actor the reference rather than the value
        self._tokenizer = ray.put(local.tokenizer)
        self._plugins = [name for _, names in LOADED for name in names]
        self._prefix = f"rft-runner:{cfg.name}:{os.getpid()}"
        self._incarnation = [0] * size
        nodes = _wait_for_nodes(int(cfg.cluster.node_num or 0))
        self.actors = [self._spawn(i, nodes[i % len(nodes)]) for i in range(size)]
        self.nodes: list[dict[str, str]] = [{} for _ in range(size)]
        refs = [a.where.remote() for a in self.actors]
        try:
            self.nodes = ray.get(refs, timeout=ACTOR_START_S)
        except Exception as exc:
            self.close()
            raise RunnerError(f"the {size} workflow runners (explorer.runner_per_model x rollout_model.engine_num) "
                              f"did not start on Ray (waited up to {ACTOR_START_S:.0f}s): {type(exc).__name__}: "
                              f"{exc}") from exc
        by_node = Counter(f"{n['ip']} {n['node_id'][:8]}" for n in self.nodes)
        log.info("%d workflow runners on %d Ray node(s): %s", size, len(by_node),
                 ", ".join(f"{k} x{v}" for k, v in sorted(by_node.items())))

    def _spawn(self, i: int, node_id: str) -> Any:
        self._incarnation[i] += 1
        return self._remote.options(
            name=f"{self._prefix}:{i}:{self._incarnation[i]}",
            # as Trinity, runners reserve no CPU (their work is mostly waiting on the sampler). They are dealt
            # round-robin over the nodes, pinned: Ray's SPREAD and soft affinity both leave zero-CPU actors
            # together on one node. So Ray does not restart one (its node may be gone): the pool replaces it
            num_cpus=0, max_restarts=0, max_task_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            # one call at a time: a runner's workflows share its sampler and its loopback OpenAI endpoint
            max_concurrency=1,
        ).remote(self.cfg, self.local.tasksets, [self._tokenizer], self.local.chat_template,
                 self.local.enable_thinking, self.conn.base_url, self.conn.api_key, self.conn.base_model(),
                 self._plugins, i)

    def _replace(self, i: int) -> None:
        """A new runner i on the alive node with the fewest of this pool's runners (the old one is dead)."""
        try:
            ray.kill(self.actors[i], no_restart=True)
        except Exception:  # noqa: S110 - it is dead already
            pass
        lost = self.nodes[i].get("node_id")
        alive = _wait_for_nodes(1)
        # the node it died on may be gone without Ray knowing yet (health checks take seconds)
        alive = [n for n in alive if n != lost] or alive
        here = {n: 0 for n in alive}
        for j, node in enumerate(self.nodes):
            if j != i and node.get("node_id") in here:
                here[node["node_id"]] += 1
        target = min(alive, key=lambda n: (here[n], n))
        self.actors[i] = self._spawn(i, target)
        self.nodes[i] = {"node_id": target, "ip": next((n["NodeManagerAddress"] for n in ray.nodes()
                                                        if n["NodeID"] == target), "?")}

    def _where(self, i: int) -> str:
        node = self.nodes[i] or {}
        return f"runner {i} on node {node.get('ip', '?')} ({node.get('node_id', '?')[:12]})"

    def run(self, tasks: list[Any], sampler: Any, *, explore_step: int, repeat: int, greedy: bool = False,
            version: int = 0, path: str | None = None, timeout: float | None = None,
            pace: Pace | None = None) -> list[TaskOutcome]:
        """Every task on some idle runner; one TaskOutcome per task, in task order, as LocalRunners.run gives
        them. `sampler` is the driver's and is not used: each runner makes its own for `path`. `timeout`: seconds
        a run may take; `pace`: stop waiting once enough tasks are in (the others come back late). User errors
        are logged by the driver's LocalRunners, once per job."""
        with self._busy:
            if self._closed.is_set():
                raise RunnerError("the workflow runners were stopped")
            generation = self.conn.generation
            results: list[Any] = [None] * len(tasks)
            tries = [0] * len(tasks)
            pending = deque(range(len(tasks)))
            # a runner still finishing a late task of an earlier batch gets no task until it is done
            idle = deque(a for a in range(self.size) if a not in self._draining.values())
            running: dict[Any, tuple[int, int, float]] = {}
            try:
                self._dispatch(tasks, results, tries, pending, idle, running, explore_step, repeat, greedy,
                               version, path, generation, timeout, pace)
            except BaseException:
                for ref in running:  # the batch is retried or the job ends: drop what has not started
                    try:
                        ray.cancel(ref)
                    except Exception:  # noqa: S110 - finished or gone meanwhile
                        pass
                raise
            for slot, outcome in enumerate(results):
                if outcome is None:  # late (over_rollout): cancelled or never started
                    task = tasks[slot]
                    results[slot] = TaskOutcome(slot, task.index, task.row, taskset=getattr(task, "taskset", 0),
                                                late=True)
                    continue
                for kind, text in outcome.user_errors:
                    self.local.log_user_error(kind, text, outcome)
            return results

    def _dispatch(self, tasks: list[Any], results: list[Any], tries: list[int], pending: deque[int],
                  idle: deque[int], running: dict[Any, tuple[int, int, float]], explore_step: int, repeat: int,
                  greedy: bool, version: int, path: str | None, generation: int, timeout: float | None,
                  pace: Pace | None) -> None:
        """Hand tasks to idle runners until every one has its outcome, or (pace) enough have (the body of run)."""
        deadline: float | None = None
        while pending or running:
            while pending and idle:
                slot, a = pending.popleft(), idle.popleft()
                ref = self.actors[a].run.remote(slot, tasks[slot], explore_step, repeat, greedy, version, path,
                                                generation, timeout)
                running[ref] = (slot, a, time.monotonic())
            self._settle_draining(idle)
            wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            if running:
                done, _ = ray.wait(list(running), num_returns=1, timeout=wait)
            else:  # every runner is finishing a late task of an earlier batch: wait for one to be free
                done = []
                ray.wait(list(self._draining), num_returns=1, timeout=1.0)
            if self._closed.is_set():
                raise RunnerError("the workflow runners were stopped")
            for ref in done:
                slot, a, _ = running.pop(ref)
                try:
                    outcome, node = ray.get(ref)
                except Exception as exc:
                    if not _actor_died(exc):
                        # the runner's own exception (a sampler failure: the loop reconnects and retries the
                        # batch, or a refusal that ends the job), without Ray's wrapping and remote traceback
                        cause = getattr(exc, "cause", None) or exc
                        log.warning("task %d (row %d) of explore step %d failed on %s: %s", slot,
                                    tasks[slot].index, explore_step, self._where(a),
                                    f"{type(cause).__name__}: {cause}".splitlines()[0])
                        raise cause from None
                    tries[slot] += 1
                    if tries[slot] > self.retries:
                        raise RunnerError(
                            f"task {slot} (row {tasks[slot].index}) of explore step {explore_step}: its runner "
                            f"died {tries[slot]} times (explorer.max_retry_times: {self.retries}); the last "
                            f"was {self._where(a)}: {type(exc).__name__}: {exc}") from exc
                    log.warning("%s went away while running task %d (row %d) of explore step %d (%s); a new "
                                "runner takes its place and the task runs again (try %d of %d)", self._where(a),
                                slot, tasks[slot].index, explore_step, type(exc).__name__.split("(")[0],
                                tries[slot] + 1, self.retries + 1)
                    self._replace(a)
                    pending.appendleft(slot)
                    idle.append(a)
                    continue
                self.nodes[a] = node
                results[slot] = outcome
                idle.append(a)
            if pace is not None and deadline is None and sum(r is not None for r in results) >= pace.min_done:
                deadline = time.monotonic() + pace.wait_after_min
            if deadline is not None and time.monotonic() >= deadline and (pending or running):
                # over_rollout: the batch goes on without the rest; a runner still on a late task finishes it
                # (a running task cannot be interrupted) and takes no new one until then, its result unused
                pending.clear()
                for ref, (_, a, _) in running.items():
                    try:
                        ray.cancel(ref)
                    except Exception:  # noqa: S110 - finished meanwhile
                        pass
                    self._draining[ref] = a
                running.clear()
                return
            if not done:
                self._check_overdue(running, tasks, explore_step)

    def _settle_draining(self, idle: deque[int]) -> None:
        """Runners whose late task has ended are idle again."""
        if not self._draining:
            return
        ended, _ = ray.wait(list(self._draining), num_returns=len(self._draining), timeout=0)
        for ref in ended:
            idle.append(self._draining.pop(ref))

    def _check_overdue(self, running: dict[Any, tuple[int, int, float]], tasks: list[Any], step: int) -> None:
        now = time.monotonic()
        for slot, a, since in running.values():
            if now - since > self.task_bound + 60:
                raise RunnerError(f"task {slot} (row {tasks[slot].index}) of explore step {step} has run "
                                  f"{now - since:.0f}s on {self._where(a)}, past explorer.max_timeout x "
                                  f"(max_retry_times + 1) = {self.task_bound:.0f}s: the runner does not answer")

    def close(self) -> None:
        """Stop the runners: their tinker sessions finished, then the actors killed (none left behind)."""
        self._closed.set()
        got = self._busy.acquire(timeout=15)  # a batch in progress notices within a second
        try:
            if not ray.is_initialized():
                return
            closing = [a.close.remote() for a in self.actors]
            try:
                ray.wait(closing, num_returns=len(closing), timeout=15)
            except Exception:  # noqa: S110 - a dead runner has nothing to close
                pass
            for a in self.actors:
                try:
                    ray.kill(a, no_restart=True)
                except Exception:  # noqa: S110 - already gone
                    pass
        finally:
            if got:
                self._busy.release()
