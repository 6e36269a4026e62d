"""tool_call_workflow: Trinity-RFT 0.6's Tool-N1 task (learning to call tools from a ToolACE-style row).

A row holds `tools` (a JSON list of function specs), `raw_system` (the system text), `conversations`
(turns with `from` human/user, gpt/assistant, observation/tool, function_call and their `value`) and
`answer` (a JSON list of the expected calls). The prompt lists the tools and asks for
`<think>...</think>` then `<tool_call>[{"name": ..., "arguments": {...}}, ...]</tool_call>`. Reward 1 when
the reply has exactly one think block before its tool call and the calls equal the answer (as a multiset of
name + arguments), else 0.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from rft_runtime.workflows.experience import Experience
from rft_runtime.workflows.single_turn import SingleTurnWorkflow

TOOL_PROMPT = """# Tool

<tools>
{tools}
</tools>

In each action step, you MUST:
1. Think about the reasoning process in the mind and enclosed your reasoning within <think> </think> XML tags.
2. Then, provide a json object with function names and arguments within <tool_call></tool_call> XML tags. i.e., <tool_call>[{{"name": <function-name>, "arguments": <args-json-object>}}, {{"name": <function-name2>, "arguments": <args-json-object2>}}, ...]</tool_call>
3. Make sure both the reasoning and the tool call steps are included together in one single reply.
A complete reply example is: <think>To address the query, I need to send the email to Bob and then buy the banana through walmart. </think> <tool_call> [{{"name": "email", "arguments": {{"receiver": "Bob", "content": "I will bug banana through walmart"}}}}, {{"name": "walmart", "arguments": {{"input": "banana"}}}}]</tool_call>. Please make sure the type of the arguments is correct.
"""
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "observation": "tool",
          "tool": "tool"}
_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def tool_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """The chat messages of a Tool-N1 row: the system text with the tool list, then its conversation."""
    tools = row["tools"]
    specs = json.loads(tools) if isinstance(tools, str) else tools
    listed = "\n".join(json.dumps({"type": "function", "function": spec}) for spec in specs)
    messages = [{"role": "system", "content": str(row.get("raw_system") or "") + TOOL_PROMPT.format(tools=listed)}]
    for turn in row.get("conversations") or []:
        source = turn.get("from")
        if source == "function_call":
            messages.append({"role": "assistant", "content": json.dumps(turn.get("value"))})
        elif source in _ROLES:
            messages.append({"role": _ROLES[source], "content": turn.get("value")})
    return messages


def _calls(reply: str) -> list[Any] | None:
    found = _CALL.findall(reply)
    if not found:
        return None
    try:
        calls = json.loads(found[-1].strip())
        if isinstance(calls, str):
            calls = json.loads(calls)
    except ValueError:
        return None
    return [calls] if isinstance(calls, dict) else calls


def _same_calls(got: list[Any], want: list[Any]) -> bool:
    if not got or not want:
        return len(got) == len(want)
    try:
        def key(items: list[Any]) -> Counter:
            return Counter((c["name"], json.dumps(c["arguments"], sort_keys=True)) for c in items)

        return key(got) == key(want)
    except (TypeError, KeyError):
        return False


def tool_call_reward(reply: str, answer: Any) -> float:
    """1.0 for one well-placed <think> block and tool calls equal to the answer (Tool-N1's rule), else 0.0."""
    want = json.loads(answer) if isinstance(answer, str) else answer
    if isinstance(want, str):
        want = json.loads(want)
    got = _calls(reply)
    if got is None or reply.count("<think>") != 1 or reply.count("</think>") != 1:
        return 0.0
    call_at = reply.find("<tool_call>")
    if call_at != -1 and reply.find("</think>") > call_at:
        return 0.0
    if not isinstance(got, list) or any(not isinstance(c, dict) or "name" not in c or "arguments" not in c
                                        for c in got):
        return 0.0
    return 1.0 if _same_calls(got, want) else 0.0


class ToolCallWorkflow(SingleTurnWorkflow):
    """tool_call_workflow: the Tool-N1 prompt of the row; reward tool_call_reward against its `answer`
    (0 with a logged error when the row has none)."""

    is_async = True

    def format_messages(self) -> list[dict[str, str]]:
        """The Tool-N1 messages of the row."""
        return tool_messages(self.raw_task)

    async def run_async(self) -> list[Experience]:
        """Sample the replies and score each against the row's answer."""
        exps = await self.model.chat_async(self.format_messages(), **self.rollout_args)
        answer = self.raw_task.get("answer")
        if answer is None:
            self.logger.error("the task has no 'answer' column: tool_call_workflow rewards 0")
        for i, exp in enumerate(exps):
            exp.reward = 0.0 if answer is None else tool_call_reward(exp.response_text or "", answer)
            exp.eid.run = i + self.run_id_base
        return exps
