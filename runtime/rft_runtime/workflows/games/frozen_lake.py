"""frozen_lake_workflow: walk a FrozenLake grid (gymnasium's toy-text environment) to the goal, one move per
turn, as Trinity-RFT 0.6's workflow of that name plays it.

The row gives `size`, `p` (the share of frozen tiles) and `seed`; a random map is drawn from them with a
path from start to goal of at most workflow_args.env_max_steps moves (8), unless workflow_args.desc gives
the map. Each turn shows the grid (P player, _ frozen, O hole, G goal) and the model answers with a move
in triple backticks (Up, Down, Left, Right). Up to workflow_args.agent_max_steps turns (10); the episode
ends on the goal or a hole. The whole conversation is one experience (only the model's turns carry
loss); reward 1 on the goal, else 0; info env_steps, env_done, test_score. workflow_args.is_slippery
(False) makes moves slip as gymnasium's do.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from rft_runtime.workflows.base import WorkflowError
from rft_runtime.workflows.experience import Experience
from rft_runtime.workflows.protocol import MultiTurnWorkflow, Task

SYSTEM_PROMPT = """You are a helpful assistant walking across a frozen lake.

FrozenLake rules
Goal: move the player (P) onto the goal (G).

Map symbols:
_ frozen tile | O hole | G goal | P player

1. Do not step into a hole (O).
2. Frozen tiles can be slippery: a move may now and then go sideways instead.

Moves (one per turn): Up | Down | Left | Right

Rewards: reaching the goal earns 1.0; falling into a hole earns 0.

Each turn you see the current map. Think it through, then give only your NEXT move inside triple backticks,
for example ```Up```. Reach the goal in as few moves as you can; slipping is rare, so do not overthink it.
Every turn must end with one of Up, Down, Left, Right inside ``` ```.
"""
MOVES = {"left": 1, "down": 2, "right": 3, "up": 4}  # gymnasium's actions are these minus one
_CELLS = {"P": " P \t", "F": " _ \t", "H": " O \t", "G": " G \t", "X": " X \t", "V": " √ \t"}


def random_map(size: int, p: float, seed: int, max_steps: int) -> list[str]:
    """A size x size map (S start, G goal, F frozen, H hole) with a path from S to G of at most max_steps
    moves, drawn reproducibly from `seed` with gymnasium's generator."""
    from gymnasium.utils import seeding  # gymnasium is this workflow's optional environment (see the class)

    rng, _ = seeding.np_random(seed)
    p = min(1.0, p)
    while True:
        board = rng.choice(["F", "H"], (size, size), p=[p, 1 - p]).tolist()
        while True:
            start = (int(rng.integers(0, size)), int(rng.integers(0, size)))
            goal = (int(rng.integers(0, size)), int(rng.integers(0, size)))
            if start != goal:
                break
        board[start[0]][start[1]] = "S"
        board[goal[0]][goal[1]] = "G"
        if _reachable(board, start, max_steps):
            return ["".join(row) for row in board]


def _reachable(board: list[list[str]], start: tuple[int, int], max_steps: int) -> bool:
    size = len(board)
    todo, seen = [(start[0], start[1], 0)], set()
    while todo:
        r, c, steps = todo.pop()
        if steps > max_steps or (r, c) in seen:
            continue
        seen.add((r, c))
        for dr, dc in ((1, 0), (0, 1), (-1, 0), (0, -1)):
            nr, nc = r + dr, c + dc
            if 0 <= nr < size and 0 <= nc < size:
                if board[nr][nc] == "G":
                    return True
                if board[nr][nc] != "H":
                    todo.append((nr, nc, steps + 1))
    return False


def parse_move(reply: str) -> int:
    """The move in the reply's last ``` ``` block (a direction or its number 1-4), else 0 (no move)."""
    blocks = re.findall(r"```(.*?)```", reply, re.DOTALL)
    if not blocks:
        return 0
    said = blocks[-1].strip().lower()
    if said in MOVES:
        return MOVES[said]
    return int(said) if said.isdigit() and int(said) in MOVES.values() else 0


class FrozenLakeWorkflow(MultiTurnWorkflow):
    """Trinity's FrozenLake game; see the module."""

    can_reset = False
    is_async = True

    def __init__(self, *, task: Task, model: Any, auxiliary_models: list[Any] | None = None):
        super().__init__(task=task, model=model, auxiliary_models=auxiliary_models)
        try:
            from gymnasium.envs.toy_text.frozen_lake import FrozenLakeEnv  # optional: the registry lists it
        except ImportError as exc:
            raise WorkflowError("frozen_lake_workflow needs gymnasium: pip install gymnasium") from exc
        args = task.workflow_args or {}
        self.env_max_steps = int(args.get("env_max_steps", 8))
        self.agent_max_steps = int(args.get("agent_max_steps", 10))
        self.is_slippery = bool(args.get("is_slippery", False))
        # Trinity reads max_response_tokens from rollout_args, which never holds it: the budget is its default
        self.max_response_tokens = int(asdict(task.rollout_args).get("max_response_tokens") or 10240)
        row = task.raw_task or {}
        self.seed = int(row.get("seed", 42))
        desc = args.get("desc") or random_map(int(row.get("size", 1)), float(row.get("p", 0.8)), self.seed,
                                              self.env_max_steps)
        self.env = FrozenLakeEnv(desc=desc, is_slippery=self.is_slippery)

    def _cell(self) -> bytes:
        return self.env.desc[self.env.s // self.env.ncol, self.env.s % self.env.ncol]

    def render(self) -> str:
        """The grid as the model sees it: one line per row, P on the player (X in a hole, √ on the goal)."""
        rows = []
        at = divmod(int(self.env.s), self.env.ncol)
        for r, line in enumerate(self.env.desc):
            cells = []
            for c, raw in enumerate(line):
                cell = raw.decode()
                cell = "F" if cell == "S" else cell
                if (r, c) == at:
                    cell = {"H": "X", "G": "V"}.get(cell, "P")
                cells.append(_CELLS[cell])
            rows.append("".join(cells))
        return "\n".join(rows)

    def _step(self, move: int) -> tuple[float, bool]:
        if self._cell() == b"G":
            return 1.0, True
        if move not in MOVES.values():
            return 0.0, False
        _, reward, done, _, _ = self.env.step(move - 1)
        return float(reward), bool(done)

    async def run_async(self) -> list[Experience]:
        """Play one episode; the conversation becomes one experience."""
        self.env.reset(seed=self.seed)
        messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM_PROMPT}]
        rewards: list[float] = []
        steps, done, truncated, first_len = 0, False, None, 0
        seen = self.render()
        last_seen: str | None = None
        moved: int | None = None
        for turn in range(self.agent_max_steps):
            text = (f"Current Observation ({steps}): \n{seen}\nYou have not achieved the goal, P has not reached G "
                    "yet. Please give the next action.")
            if steps and moved is not None and last_seen == seen:
                text += ("\nYour last response is invalid: your position did not change. Check your reasoning, the "
                         "move you gave and its format: give only the NEXT move inside ``` ```, e.g. ```Up```.")
            text += f"\nThe maximum number of steps remaining is {self.agent_max_steps - steps}."
            messages.append({"role": "user", "content": text})
            length = await self.model.get_message_token_len(messages)
            if turn == 0:
                first_len = length
            budget = self.max_response_tokens - (length - first_len)
            if budget <= 0:
                messages.pop()
                rewards.append(0.0)
                truncated = "response_truncated"
                break
            args = {**asdict(self.task.rollout_args), "n": 1, "max_tokens": budget}
            (reply,) = await self.model.chat_async(messages, **args)
            messages.append({"role": "assistant", "content": reply.response_text or ""})
            moved = parse_move(reply.response_text or "")
            reward, done = self._step(moved)
            last_seen, seen = seen, self.render()
            rewards.append(reward)
            steps += 1
            if done:
                break
        total = float(sum(rewards))
        return [await self.process_messages_to_experience_async(
            messages, total, info={"env_steps": steps, "env_done": 1 if done else 0, "test_score": total},
            truncate_status=truncated)]
