"""Trinity-RFT 0.6's general multi-turn patterns: an agent loop whose every model call is its own experience.

Subclass and give `step(step_num)` (run one step of the agent; False to stop), `max_step_num`, and either
`reward(exps, step_num)` (StepWiseRewardWorkflow: each step's calls get that step's reward) or
`reward(exps)` (RewardPropagationWorkflow: one reward for the whole run, given to every call). The calls
are read back from the model's history (explorer.rollout_model.enable_history: true), so an agent may call
`self.model.chat(...)` or the OpenAI client `self.client` (enable_openai_api) as it likes; each
experience's eid.step is the step it came from (step-wise advantages such as step_wise_grpo group by it).
"""

from __future__ import annotations

from typing import Any

from rft_runtime.workflows.base import WorkflowError
from rft_runtime.workflows.experience import Experience
from rft_runtime.workflows.protocol import Task, Workflow


class _AgentLoop(Workflow):
    def __init__(self, *, task: Task, model: Any, auxiliary_models: list[Any] | None = None,
                 use_openai_client: bool = True):
        super().__init__(task=task, model=model, auxiliary_models=auxiliary_models)
        if not getattr(model, "enable_history", False):
            raise WorkflowError(f"{type(self).__name__} reads each step's model calls from the history: set "
                                "explorer.rollout_model.enable_history: true")
        self.client = model.get_openai_client() if use_openai_client else None

    def step(self, step_num: int) -> bool:
        """Run one step of the agent; return whether to go on."""
        raise NotImplementedError

    async def step_async(self, step_num: int) -> bool:
        """step(), for async workflows."""
        raise NotImplementedError

    @property
    def max_step_num(self) -> int:
        """The most steps a run takes."""
        raise NotImplementedError

    def _collect(self, step: int) -> list[Experience]:
        exps = self.model.extract_experience_from_history()
        for exp in exps:
            exp.eid.step = step
        return exps


class StepWiseRewardWorkflow(_AgentLoop):
    """Each step's model calls are rewarded by reward(exps, step_num) of that step."""

    def reward(self, exps: list[Experience], step_num: int) -> float:
        """The reward of one step's experiences."""
        raise NotImplementedError

    async def reward_async(self, exps: list[Experience], step_num: int) -> float:
        """reward(), for async workflows."""
        raise NotImplementedError

    def run(self) -> list[Experience]:
        """Step until the agent stops or max_step_num; reward each step's calls."""
        out: list[Experience] = []
        for step in range(self.max_step_num):
            going = self.step(step_num=step)
            exps = self._collect(step)
            value = self.reward(exps, step_num=step)
            for exp in exps:
                exp.reward = value
            out += exps
            if not going:
                break
        return out


class AsyncStepWiseRewardWorkflow(StepWiseRewardWorkflow):
    """StepWiseRewardWorkflow with step_async / reward_async."""

    is_async = True

    async def run_async(self) -> list[Experience]:
        """Step until the agent stops or max_step_num; reward each step's calls."""
        out: list[Experience] = []
        for step in range(self.max_step_num):
            going = await self.step_async(step_num=step)
            exps = self._collect(step)
            value = await self.reward_async(exps, step_num=step)
            for exp in exps:
                exp.reward = value
            out += exps
            if not going:
                break
        return out


class RewardPropagationWorkflow(_AgentLoop):
    """One reward for the whole run, reward(exps), given to every model call; metric actual_env_steps."""

    def reward(self, exps: list[Experience]) -> float:
        """The reward of the whole run."""
        raise NotImplementedError

    async def reward_async(self, exps: list[Experience]) -> float:
        """reward(), for async workflows."""
        raise NotImplementedError

    @staticmethod
    def _propagate(out: list[Experience], value: float, steps: int) -> list[Experience]:
        for exp in out:
            exp.reward = value
            exp.metrics["actual_env_steps"] = steps
        return out

    def run(self) -> list[Experience]:
        """Step until the agent stops or max_step_num; give every call the run's reward."""
        out: list[Experience] = []
        steps = 0
        for step in range(self.max_step_num):
            going = self.step(step_num=step)
            out += self._collect(step)
            steps = step + 1
            if not going:
                break
        return self._propagate(out, self.reward(out), steps)


class AsyncRewardPropagationWorkflow(RewardPropagationWorkflow):
    """RewardPropagationWorkflow with step_async / reward_async."""

    is_async = True

    async def run_async(self) -> list[Experience]:
        """Step until the agent stops or max_step_num; give every call the run's reward."""
        out: list[Experience] = []
        steps = 0
        for step in range(self.max_step_num):
            going = await self.step_async(step_num=step)
            out += self._collect(step)
            steps = step + 1
            if not going:
                break
        return self._propagate(out, await self.reward_async(out), steps)
