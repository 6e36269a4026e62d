"""Workflows whose reward comes from another model: math_rm (a reward model), math_ruler (RULER: a judge
scores the whole group at once), math_trainable_ruler (the policy judges itself and learns to), and
rubric_judge (a judge rates each reply against the row's rubric; its _openai form asks an external API).

The judge is `explorer.auxiliary_models[0]` (a sampling client of a Tinker base model whose weights never
change), except for math_trainable_ruler (the policy) and rubric_judge_openai_workflow (an OpenAI-
compatible API named by workflow_args and environment variables). Prompts, parsing and scores follow
Trinity-RFT 0.6's classes of the same names.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import random
import re
from typing import Any

from rft_runtime.workflows.base import Score, WorkflowError, as_score
from rft_runtime.workflows.experience import Experience
from rft_runtime.workflows.protocol import Task
from rft_runtime.workflows.single_turn import MathWorkflow, SingleTurnWorkflow


def _judge_wrapper(wf: Any, name: str) -> Any:
    if not wf.auxiliary_model_wrappers:
        raise WorkflowError(f"{name} needs a judge: name one in explorer.auxiliary_models (its model_path is "
                            "a Tinker base model; the first entry is the judge)")
    return wf.auxiliary_model_wrappers[0]


def _reply(experiences: list[Any]) -> str:
    return (experiences[0].response_text or "") if experiences else ""


# ---------------------------------------------------------------- math_rm_workflow

RM_PROMPT = (
    "You grade answers to math problems.\nProblem:\n{question}\nReference answer:\n{truth}\n"
    "Student answer:\n{response}\nHow correct is the student answer? Reply with only a score from 0 to 10 "
    "inside <score></score> tags."
)
_SCORE = re.compile(r"<score>\s*(-?\d+(?:\.\d+)?)\s*</score>")


class MathRMWorkflow(MathWorkflow):
    """math_rm_workflow: the reward comes from a reward model.

    As in Trinity, a reward function named by default_reward_fn_type (an RM-Gallery style class) is called
    with (experience, messages, ground_truth=truth) and its parts summed. Without one, this runtime asks
    explorer.auxiliary_models[0] to grade each reply 0..10 (workflow_args rm_prompt, with {question},
    {truth}, {response}): reward = score / 10, metrics rm_score, and rm_parse_error when the grade had no
    score."""

    default_reward_fn = None

    def _grader(self) -> Any:
        return _judge_wrapper(self, "math_rm_workflow (without a reward function)")

    def _rm_messages(self, response: str) -> list[dict[str, str]]:
        template = self.workflow_args.get("rm_prompt") or RM_PROMPT
        return [{"role": "user", "content": template.format(question=self.task_desc, truth=self.truth,
                                                            response=response)}]

    @staticmethod
    def _rm_score(reply: str) -> Score:
        found = _SCORE.findall(reply)
        if not found:
            return Score(0.0, {"rm_score": 0.0, "rm_parse_error": 1.0})
        value = min(max(float(found[-1]), 0.0), 10.0) / 10.0
        return Score(value, {"rm_score": value, "rm_parse_error": 0.0})

    def _reward_model_score(self, exp: Experience) -> Score:
        return as_score(self.reward_fn(exp, self.format_messages(), ground_truth=self.truth))

    def _scored(self, experiences: list[Experience]) -> list[Experience]:
        if self.task.reward_fn is None:
            return super()._scored(experiences)
        for i, exp in enumerate(experiences):
            exp.eid.run = i + self.run_id_base
            score = self._reward_model_score(exp)
            exp.reward = score.reward
            exp.metrics.update(score.metrics)
        return experiences

    def score(self, row: dict[str, Any], response: str, **extra: Any) -> Score:
        """The reward model's grade of the response."""
        return self._rm_score(_reply(self._grader().chat(self._rm_messages(response), n=1)))


class AsyncMathRMWorkflow(MathRMWorkflow):
    """math_rm_workflow, sampled and graded with chat_async (graded concurrently)."""

    is_async = True

    async def run_async(self) -> list[Experience]:
        """Sample, then grade every reply concurrently."""
        exps = await self.model.chat_async(self.format_messages(), **self.rollout_args)
        if self.task.reward_fn is not None:
            return self._scored(exps)
        grader = self._grader()

        async def grade(exp: Experience) -> None:
            if exp.truncate_status == "prompt_truncated":
                exp.reward = 0.0
                return
            score = self._rm_score(_reply(await grader.chat_async(self._rm_messages(exp.response_text or ""),
                                                                  n=1)))
            exp.reward = score.reward
            exp.metrics.update(score.metrics)

        await asyncio.gather(*[grade(e) for e in exps])
        for i, exp in enumerate(exps):
            exp.eid.run = i + self.run_id_base
        return exps


# ---------------------------------------------------------------- RULER

_SOLUTION_FORMAT = (
    "Solution format requirement: first think about the reasoning process in the mind and then provides the "
    "final answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e.,\n<think> reasoning process here </think>\n<answer> answer here "
    "</answer>."
)


def ruler_messages(question: Any, responses: list[str]) -> list[dict[str, str]]:
    """The RULER judge's prompt: the question and every candidate, asking for a list of scores in [0, 1]."""
    n = len(responses)
    system = (f"You are a fair judge. The user will provide a question and {n} candidate solutions to it. Your "
              "task is to compare the solutions, see how well they resolve the question, and assign a score "
              "within the range [0, 1] for each solution.")
    solutions = "\n\n".join(f"Candidate solution {i + 1}: {r}" for i, r in enumerate(responses))
    user = (f"\nBelow is a question and several candidate solutions.\n\nQuestion: {question}\n\n{_SOLUTION_FORMAT}"
            f"\n\n{solutions}\n\nPlease assign a score within the range [0, 1] for each of them, reflecting how "
            "well they solve the question.\nYou may compare them against each other and think step by step "
            "before returning your final scores, but keep your reasoning process brief and concise when "
            "possible.\n\nConclude your response with a list of scores, in the following format: [score for "
            f"solution 1, score for solution 2, ..., score for solution {n}]\n")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_ruler_scores(text: str, n: int) -> list[float] | None:
    """The last [a, b, ...] list of the judge's reply, each clipped to [0, 1]; None unless it has n numbers."""
    start, end = text.rfind("["), text.rfind("]")
    if start < 0 or end < 0 or start > end:
        return None
    try:
        scores = ast.literal_eval(text[start:end + 1])
        out = [min(1.0, max(0.0, float(s))) for s in scores]
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return out if len(out) == n else None


class MathRULERWorkflow(MathWorkflow):
    """math_ruler_workflow: replies are sampled as math_workflow's and scored with its reward only for the
    record (metrics accuracy, format_score, gold_reward); the training reward is RULER's: the judge
    (explorer.auxiliary_models[0]) sees the question and all replies of the task together and returns one
    score in [0, 1] each. A reply the judge's list cannot be read from scores 0 (metric judge_success 0)."""

    def _gold(self, experiences: list[Experience]) -> list[Experience]:
        for i, exp in enumerate(experiences):
            score = self.score(self.raw_task, exp.response_text or "")
            exp.metrics.update(score.metrics)
            exp.metrics["gold_reward"] = score.reward
            exp.eid.run = i + self.run_id_base
        return experiences

    def _apply(self, experiences: list[Experience], judged: str) -> list[Experience]:
        scores = parse_ruler_scores(judged, len(experiences))
        for exp, value in zip(experiences, scores or [0.0] * len(experiences), strict=True):
            exp.reward = value
            exp.metrics["judge_success"] = float(scores is not None)
        return experiences

    def run(self) -> list[Experience]:
        """Sample the group, score it for the record, then have the judge score it for training."""
        exps = self._gold(self.model.chat(self.format_messages(), **self.rollout_args))
        judge = _judge_wrapper(self, "math_ruler_workflow")
        prompt = ruler_messages(self.task_desc, [e.response_text or "" for e in exps])
        return self._apply(exps, _reply(judge.chat(prompt, n=1)))


class AsyncMathRULERWorkflow(MathRULERWorkflow):
    """math_ruler_workflow, sampled and judged with chat_async."""

    is_async = True

    async def run_async(self) -> list[Experience]:
        """Sample the group, score it for the record, then have the judge score it for training."""
        exps = self._gold(await self.model.chat_async(self.format_messages(), **self.rollout_args))
        judge = _judge_wrapper(self, "async_math_ruler_workflow")
        prompt = ruler_messages(self.task_desc, [e.response_text or "" for e in exps])
        return self._apply(exps, _reply(await judge.chat_async(prompt, n=1)))


# the share of tasks on which the trainable judge is taught from the ground truth (Trinity's constant)
GROUND_TRUTH_SHARE = 0.2


class MathTrainableRULERWorkflow(MathRULERWorkflow):
    """math_trainable_ruler_workflow: the policy is its own RULER judge.

    On a random GROUND_TRUTH_SHARE of tasks the replies are rewarded by math_workflow's gold reward, and
    repeat_times judgements of the group are sampled from the policy too, each rewarded 1 - mean |its
    scores - the gold scores scaled to [0, 1]|, and returned as experiences of task "<task>-ruler" (a group
    of their own). On the others, one judgement's scores (averaged over the readable ones) are the reward."""

    def run(self) -> list[Experience]:
        """Sample, score for the record, judge with the policy; train the judge where the truth is used."""
        exps = self._gold(self.model.chat(self.format_messages(), **self.rollout_args))
        for exp in exps:
            exp.eid.task = str(self.task.task_id)
        gold = [exp.metrics["gold_reward"] for exp in exps]
        prompt = ruler_messages(self.task_desc, [e.response_text or "" for e in exps])
        use_truth = random.random() < GROUND_TRUTH_SHARE
        args = dict(self.rollout_args)
        if not use_truth:
            args["n"] = 1
        judgements = self.model.chat(prompt, **args)
        scaled = [(g + 0.1) / 1.2 for g in gold]  # math_reward's [-0.1, 1.1] onto [0, 1]
        totals = [0.0] * len(exps)
        readable = 0
        for judgement in judgements:
            judgement.reward = 0.0
            scores = parse_ruler_scores(judgement.response_text or "", len(exps))
            if scores is None:
                continue
            readable += 1
            totals = [t + s for t, s in zip(totals, scores, strict=True)]
            if use_truth:
                judgement.reward = 1.0 - sum(abs(s - g) for s, g in zip(scores, scaled, strict=True)) / len(exps)
        rate = readable / len(judgements) if judgements else 0.0
        for i, judgement in enumerate(judgements):
            judgement.metrics.update(judge_success=rate, reward_for_judge=judgement.reward)
            judgement.eid.task = f"{self.task.task_id}-ruler"
            judgement.eid.run = i + self.run_id_base
        ruler = [t / readable for t in totals] if readable else totals
        for exp, g, r in zip(exps, gold, ruler, strict=True):
            exp.reward = g if use_truth else r
            exp.metrics["judge_success"] = rate
        return exps + judgements if use_truth else exps


# ---------------------------------------------------------------- rubric judge

RUBRIC_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer.\n    "
)
JUDGE_SYSTEM_PROMPT = (
    "You are an expert evaluator. Given a user prompt, a generated response, and a list of quality rubrics, "
    "please rate the overall quality of the response on a scale of 1 to 10 based on how well it satisfies the "
    "rubrics.\nConsider all rubrics holistically when determining your score. A response that violates "
    "multiple rubrics should receive a lower score, while a response that satisfies all rubrics should "
    "receive a higher score.\nStart your response with a valid JSON object that starts with \"```json\" and "
    "ends with \"```\". The JSON object should contain\na single key \"rating\" and the value should be an "
    "integer between 1 and 10.\nExample response:\n```json\n{\n\"rating\": 7\n}```"
)


def rubric_messages(prompt: Any, response: str, rubric: list[dict]) -> list[dict[str, str]]:
    """The judge's prompt: the task, the reply, and the weighted rubric items."""
    if rubric:
        items = "\n".join(f"Rubric {i} (weight: {r.get('weight')}): {r.get('description')}"
                          for i, r in enumerate(rubric))
    else:
        items = "Rubrics are not provided."
    user = ("Given the following prompt, response, and rubrics, please rate the overall quality of the response "
            "on a scale of 1 to 10 based\non how well it satisfies the rubrics.\n<prompt>\n"
            f"{prompt}\n</prompt>\n<response>\n{response}\n</response>\n<rubrics>\n{items}\n</rubrics>\n"
            "Your JSON Evaluation:")
    return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_rating(text: str) -> float | None:
    """rating / 10 from the judge's ```json {"rating": N}``` block (N in 1..10), else None."""
    start_tag = "```json"
    start = text.find(start_tag)
    if start < 0:
        start_tag = "```"
        start = text.find(start_tag)
    if start < 0:
        return None
    end = text.find("```", start + len(start_tag))
    if end < 0:
        return None
    try:
        rating = json.loads(text[start + len(start_tag):end].strip()).get("rating")
    except (ValueError, AttributeError):
        return None
    if isinstance(rating, bool) or not isinstance(rating, (int, float)) or not 1 <= rating <= 10:
        return None
    return rating * 0.1


class RubricJudgeWorkflow(SingleTurnWorkflow):
    """rubric_judge_workflow (Rubrics as Rewards): each reply is rated 1..10 by the judge
    (explorer.auxiliary_models[0], at temperature 0) against the row's `rubric` column (a list of
    {description, weight}); reward = rating / 10, 0 when the rating cannot be read. Metric judge_success:
    the share of the task's replies whose rating was read."""

    default_system_prompt = RUBRIC_SYSTEM_PROMPT

    def reset(self, task: Task) -> None:
        """Take the task; its rubric is the row's `rubric` column."""
        super().reset(task)
        self.rubric = list(self.raw_task.get("rubric") or [])

    def judge(self, messages: list[dict[str, str]]) -> str:
        """The judge's reply to one rating prompt."""
        return _reply(_judge_wrapper(self, "rubric_judge_workflow").chat(messages, n=1, temperature=0.0))

    def run(self) -> list[Experience]:
        """Sample, then rate each reply."""
        exps = self.model.chat(self.format_messages(), **self.rollout_args)
        rated = []
        for i, exp in enumerate(exps):
            value = parse_rating(self.judge(rubric_messages(self.task_desc, exp.response_text or "", self.rubric)))
            exp.reward = value or 0.0
            exp.eid.run = i + self.run_id_base
            rated.append(value is not None)
        rate = sum(rated) / len(rated) if rated else 0.0
        for exp in exps:
            exp.metrics["judge_success"] = rate
        return exps


class RubricJudgeWorkflowWithAPI(RubricJudgeWorkflow):
    """rubric_judge_openai_workflow: rubric_judge_workflow with an external OpenAI-compatible API as the judge:
    workflow_args judge_model_name (required), judge_api_base_url_env (the variable holding the base URL,
    default OPENAI_BASE_URL) and judge_api_key_env (default OPENAI_API_KEY)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        args_ = self.task.workflow_args or {}
        self.judge_model = args_.get("judge_model_name")
        url_env = args_.get("judge_api_base_url_env", "OPENAI_BASE_URL")
        key_env = args_.get("judge_api_key_env", "OPENAI_API_KEY")
        if not self.judge_model:
            raise WorkflowError("rubric_judge_openai_workflow needs workflow_args.judge_model_name: the judge's "
                                "model name at the API")
        base_url = os.environ.get(url_env, "")
        if not base_url:
            raise WorkflowError(f"rubric_judge_openai_workflow reads the judge API's base URL from the environment "
                                f"variable {url_env} (workflow_args.judge_api_base_url_env), which is not set")
        import openai  # ~0.6 s to import: only this workflow's judge API needs it

        self.client = openai.OpenAI(base_url=base_url, api_key=os.environ.get(key_env, "") or "EMPTY")

    def judge(self, messages: list[dict[str, str]]) -> str:
        """The external judge's reply to one rating prompt."""
        done = self.client.chat.completions.create(model=self.judge_model, messages=messages, stream=False,
                                                   temperature=0.0)
        return done.choices[0].message.content or ""
