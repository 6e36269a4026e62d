"""Workflows written against Trinity-RFT's API (not this project's), as plugin files for the tests.

(A module of helpers; it holds no tests.) Each is source text written into a --plugin-dir. They import
only `trinity.*`, which trinity-rft would provide and this runtime's stand-in provides here. Every run
appends what it did to the JSON-lines file named by workflow_args["log"], so tests can compare what
was sampled with what trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# A text game: guess the secret digit within three turns; the "environment" answers in user turns.
GUESS_GAME = '''
import json

from trinity.common.workflows import WORKFLOWS
from trinity.common.workflows.workflow import MultiTurnWorkflow


@WORKFLOWS.register_module("guess_game")
class GuessGame(MultiTurnWorkflow):
    """Guess the digit: the environment says higher / lower until the reply contains it."""

    can_repeat = False

    def run(self):
        secret = str(self.task.raw_task["secret"])
        messages = [{"role": "system", "content": "Guess my digit."}, {"role": "user", "content": "Guess?"}]
        won = False
        turns = 0
        for turn in range(3):
            (reply,) = self.model.chat(messages, max_tokens=5)
            turns += 1
            messages.append({"role": "assistant", "content": reply.response_text})
            if secret in reply.response_text:
                won = True
                break
            messages.append({"role": "user", "content": f"No, not {turn}. Again?"})
        # a reward that differs between runs, so that group advantages are not all zero
        reward = (1.0 if won else 0.0) + 0.1 * (sum(len(m["content"]) for m in messages) % 7)
        exp = self.process_messages_to_experience(messages, reward, info={"turns": turns})
        with open(self.task.workflow_args["log"], "a") as fh:
            fh.write(json.dumps({"messages": messages, "tokens": exp.tokens.tolist()
                                 if hasattr(exp.tokens, "tolist") else list(exp.tokens),
                                 "prompt_length": exp.prompt_length, "reward": reward}) + "\\n")
        return [exp]
'''

# An agent that only speaks OpenAI: it never touches the model wrapper except to get a client.
OPENAI_AGENT = '''
import json

from trinity.common.workflows import WORKFLOWS, Workflow


@WORKFLOWS.register_module("openai_agent")
class OpenAIAgent(Workflow):
    """Asks twice through an openai.OpenAI client; every completion is recorded and trained."""

    def run(self):
        client = self.model.get_openai_client()
        question = str(self.task.raw_task["question"])
        messages = [{"role": "user", "content": question}]
        replies = []
        for _ in range(2):
            resp = client.chat.completions.create(model=client.model_path, messages=messages, max_tokens=6,
                                                  logprobs=True)
            choice = resp.choices[0]
            replies.append({"text": choice.message.content, "token_ids": choice.model_extra["token_ids"],
                            "logprobs": [c.logprob for c in choice.logprobs.content],
                            "prompt_token_ids": resp.model_extra["prompt_token_ids"]})
            messages = messages + [{"role": "assistant", "content": choice.message.content},
                                   {"role": "user", "content": "Once more."}]
        exps = self.model.extract_experience_from_history()
        reward = float(len(replies[-1]["text"]) % 3)
        for exp in exps:
            exp.reward = reward
        with open(self.task.workflow_args["log"], "a") as fh:
            fh.write(json.dumps({
                "model_version": self.model.model_version, "model_path": self.model.model_path,
                "replies": replies,
                "recorded": [{"tokens": [int(t) for t in e.tokens], "prompt_length": e.prompt_length,
                              "logprobs": [float(x) for x in e.logprobs]} for e in exps],
            }) + "\\n")
        return exps
'''

# A single-turn workflow scored by a judge: an auxiliary model reached through Trinity's OpenAI clients.
JUDGED = '''
import json

from trinity.common.workflows import WORKFLOWS, Workflow


@WORKFLOWS.register_module("judged")
class Judged(Workflow):
    """The policy answers; the judge (auxiliary model 0) grades the answer; the grade's length is the reward."""

    def run(self):
        question = str(self.task.raw_task["question"])
        answers = self.model.chat([{"role": "user", "content": question}], n=2, max_tokens=6)
        judge = self.auxiliary_models[0]
        records = []
        for i, answer in enumerate(answers):
            resp = judge.chat.completions.create(
                model=judge.model_path, max_tokens=5,
                messages=[{"role": "user", "content": f"Grade: {answer.response_text}"}])
            choice = resp.choices[0]
            answer.reward = float(len(choice.message.content) % 4)
            answer.eid.run = i
            records.append({"token_ids": choice.model_extra["token_ids"],
                            "prompt_token_ids": resp.model_extra["prompt_token_ids"],
                            "logprobs": [c.logprob for c in choice.logprobs.content]})
        with open(self.task.workflow_args["log"], "a") as fh:
            fh.write(json.dumps({
                "policy_path": self.model.model_path,
                "judge_path": self.auxiliary_model_wrappers[0].model_path,
                "policy": [{"tokens": [int(t) for t in a.tokens], "prompt_length": a.prompt_length,
                            "logprobs": [float(x) for x in a.logprobs]} for a in answers],
                "judge": records,
            }) + "\\n")
        return answers
'''


def write_plugin(folder: Path, name: str, source: str) -> Path:
    """One plugin file in the folder (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(source)
    return path


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """A JSON-lines taskset."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records a plugin workflow appended."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

# A workflow with bugs: it hangs on some tasks, raises on others, forgets the reward on the rest.
FLAKY = '''
import time

from trinity.common.workflows import WORKFLOWS, Workflow


@WORKFLOWS.register_module("flaky")
class Flaky(Workflow):
    def run(self):
        kind = self.task.raw_task["kind"]
        if kind == "hang":
            time.sleep(8)
        if kind == "raise":
            raise KeyError("no such board")
        (reply,) = self.model.chat([{"role": "user", "content": "go"}], max_tokens=3)
        if kind == "ok":
            reply.reward = 1.0
        return [reply]
'''
