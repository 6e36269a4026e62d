"""Tool calls on the loopback OpenAI endpoint: the request's `tools` go into the chat template, and the
reply's calls are read back out of the text in the format that template teaches the model.

Three formats, picked from the chat template: Hermes / Qwen (`<tool_call>{"name": ..., "arguments": {...}}
</tool_call>`, one block per call), Mistral (`[TOOL_CALLS] [{"name": ..., "arguments": {...}}]`) and bare
JSON (Llama 3: a reply that is one `{"name": ..., "parameters": {...}}` object). The sampled tokens are
not changed: the Experience trains on exactly what the model wrote; only the HTTP answer is structured.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def style_of(template: str | None) -> str:
    """"hermes", "mistral" or "json": how the chat template asks the model to write a tool call."""
    text = template or ""
    if "<tool_call>" in text:
        return "hermes"
    if "[TOOL_CALLS]" in text:
        return "mistral"
    return "json"


def _call(obj: Any) -> dict[str, Any] | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": obj["name"], "arguments": json.dumps(args, ensure_ascii=False)}}


def parse(text: str, style: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool_calls) of a reply: the text before the first call, and the calls in OpenAI's shape
    (arguments as a JSON string). A reply with no readable call is all content."""
    calls: list[dict[str, Any]] = []
    content: str | None = text
    if style == "hermes":
        blocks = _HERMES.findall(text)
        for block in blocks:
            try:
                call = _call(json.loads(block))
            except ValueError:
                call = None
            if call is None:
                return text, []
            calls.append(call)
        if calls:
            content = text[:text.index("<tool_call>")].strip() or None
    elif style == "mistral" and "[TOOL_CALLS]" in text:
        head, _, tail = text.partition("[TOOL_CALLS]")
        try:
            found = json.loads(tail.strip())
        except ValueError:
            return text, []
        found = found if isinstance(found, list) else [found]
        calls = [c for c in (_call(o) for o in found) if c is not None]
        if len(calls) != len(found):
            return text, []
        content = head.strip() or None
    elif style == "json":
        stripped = text.strip()
        if stripped.startswith("{"):
            try:
                call = _call(json.loads(stripped))
            except ValueError:
                call = None
            if call is not None:
                calls, content = [call], None
    return content, calls


def for_template(messages: list[dict]) -> list[dict]:
    """OpenAI messages as chat templates take them: an assistant turn's tool_calls with their arguments as
    objects (templates write them as JSON themselves), the rest unchanged."""
    out = []
    for m in messages:
        calls = m.get("tool_calls")
        if calls:
            fixed = []
            for c in calls:
                fn = dict(c.get("function") or {})
                if isinstance(fn.get("arguments"), str):
                    try:
                        fn["arguments"] = json.loads(fn["arguments"])
                    except ValueError:
                        pass
                fixed.append({**c, "function": fn})
            m = {**m, "tool_calls": fixed}
        out.append(m)
    return out
