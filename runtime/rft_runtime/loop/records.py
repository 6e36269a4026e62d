"""Rollouts as plain records: what an experience buffer stores and a checkpoint keeps.

A record is the JSON form of a Rollout with its advantage, plus what the buffers and Trinity's replay
read: model_version (the weights it was sampled with), use_count (times trained on), task_id and run_id.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from rft_runtime.loop.explorer import Rollout


def _plain(value: Any) -> Any:
    """value if JSON can hold it, else its text (a workflow's info may hold anything)."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def _info_record(info: dict[str, Any]) -> dict[str, Any]:
    out = {str(k): _plain(v) for k, v in info.items() if k != "prompt_chunks"}
    if info.get("prompt_chunks"):
        # a prompt with images: its chunks as the SDK writes them as JSON (an image's bytes in base64), so a
        # buffer, a replay or a checkpoint's leftover trains on the same images
        out["prompt_chunks"] = [c.model_dump(mode="json") for c in info["prompt_chunks"]]
    return out


def _info_of(record: dict[str, Any]) -> dict[str, Any]:
    info = dict(record.get("info") or {})
    if info.get("prompt_chunks"):
        import tinker  # the SDK imports torch: only records that carry images need it

        info["prompt_chunks"] = tinker.ModelInput.model_validate({"chunks": info["prompt_chunks"]}).chunks
    return info


def to_record(rollout: Rollout, *, explore_step: int, model_version: int, use_count: int = 0) -> dict[str, Any]:
    """The record of a rollout whose advantage is set."""
    eid = rollout.eid
    run = getattr(eid, "run", None) if eid is not None else None
    step = getattr(eid, "step", None) if eid is not None else None
    adv = rollout.advantage
    return {
        "task_id": f"{explore_step}/{rollout.task_index}",
        "task_index": rollout.task_index,
        "explore_step": explore_step,
        "run_id": run,
        "eid_step": step,
        "prompt_ids": list(rollout.prompt_ids),
        "tokens": list(rollout.tokens),
        "logprobs": [float(x) for x in rollout.logprobs],
        "mask": None if rollout.mask is None else list(rollout.mask),
        "text": rollout.text,
        "reward": float(rollout.reward),
        "advantage": float(adv) if isinstance(adv, (int, float)) else [float(a) for a in adv],
        "metrics": {k: float(v) for k, v in rollout.metrics.items()},
        "failed": bool(rollout.failed),
        "info": _info_record(rollout.info),
        "model_version": int(model_version),
        "use_count": int(use_count),
    }


def from_record(record: dict[str, Any]) -> Rollout:
    """The rollout a record holds (its advantage as stored)."""
    eid = None
    if record.get("run_id") is not None or record.get("eid_step") is not None:
        eid = SimpleNamespace(run=record.get("run_id"), step=record.get("eid_step") or 0)
    return Rollout(
        task_index=int(record.get("task_index", 0)), prompt_ids=[int(t) for t in record["prompt_ids"]],
        tokens=[int(t) for t in record["tokens"]], logprobs=[float(x) for x in record["logprobs"]],
        text=str(record.get("text") or ""), reward=float(record.get("reward") or 0.0),
        metrics=dict(record.get("metrics") or {}), failed=bool(record.get("failed")),
        advantage=record.get("advantage", 0.0), mask=record.get("mask"), eid=eid,
        info=_info_of(record),
    )
