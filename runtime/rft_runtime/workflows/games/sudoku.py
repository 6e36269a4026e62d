"""sudoku_workflow: the model fills a Sudoku board a few cells per turn (Trinity-RFT 0.6's rules).

Each turn shows the rules, the step count and the board (0 = empty) and asks for up to 5 moves, one
`row col value` per line (0-based). The game ends when the board is solved (reward 1), a reply cannot be
read, fills a filled cell, changes nothing or breaks a rule (reward -1), or after 20 turns; every other
turn earns 0. Each turn is its own experience (the whole prompt, the reply). A row gives `puzzle` and
`solution` (9x9 lists); without them a board is generated.
"""

from __future__ import annotations

import math
import random
from typing import Any

from rft_runtime.workflows.experience import Experience
from rft_runtime.workflows.protocol import Task, Workflow

MAX_STEPS = 20
MAX_MOVES = 5


def board_ok(board: list[list[int]]) -> bool:
    """No repeated number in any row, column or box (zeros are empty cells)."""
    size = len(board)
    block = int(math.isqrt(size))
    groups = [list(row) for row in board] + [[board[r][c] for r in range(size)] for c in range(size)]
    groups += [[board[r][c] for r in range(br, br + block) for c in range(bc, bc + block)]
               for br in range(0, size, block) for bc in range(0, size, block)]
    return all(len([v for v in g if v]) == len({v for v in g if v}) for g in groups)


def generate(size: int = 9, holes: int | None = None, rng: random.Random | None = None) -> tuple[list, list]:
    """(puzzle, solution): a random full board by backtracking, then `holes` cells emptied (half by default)."""
    rng = rng or random.Random()
    board = [[0] * size for _ in range(size)]

    def fill(pos: int = 0) -> bool:
        if pos == size * size:
            return True
        r, c = divmod(pos, size)
        for v in rng.sample(range(1, size + 1), size):
            board[r][c] = v
            if board_ok(board) and fill(pos + 1):
                return True
        board[r][c] = 0
        return False

    fill()
    solution = [row[:] for row in board]
    for pos in rng.sample(range(size * size), size * size // 2 if holes is None else holes):
        board[pos // size][pos % size] = 0
    return board, solution


def parse_moves(text: str) -> list[tuple[int, int, int]] | None:
    """The reply's `row col value` lines; None when any line is malformed or out of range, or there are
    none, or more than MAX_MOVES."""
    moves = []
    for line in text.strip().splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            return None
        try:
            r, c, v = (int(p) for p in parts)
        except ValueError:
            return None
        if not (0 <= r <= 8 and 0 <= c <= 8 and 1 <= v <= 9):
            return None
        moves.append((r, c, v))
    return moves if 0 < len(moves) <= MAX_MOVES else None


class SudokuWorkflow(Workflow):
    """Trinity's agentic Sudoku: one experience per turn, rewards as the module says."""

    can_reset = True

    def __init__(self, *, task: Task, model: Any, auxiliary_models: list[Any] | None = None):
        super().__init__(task=task, model=model, auxiliary_models=auxiliary_models)
        self.reset(task)

    def reset(self, task: Task) -> None:
        """Take the row's puzzle and solution (or a generated board)."""
        self.task = task
        row = task.raw_task or {}
        if "puzzle" in row and "solution" in row:
            self.board = [list(r) for r in row["puzzle"]]
            self.solution = [list(r) for r in row["solution"]]
        else:
            self.board, self.solution = generate()
        self.max_steps = MAX_STEPS
        self.step = 0
        self.stuck = False

    def prompt(self) -> str:
        """This turn's instructions and board."""
        board = "\n".join(" ".join(str(v) for v in row) for row in self.board)
        text = ("You are playing a Sudoku game.\n\nRules:\n- The board is 9x9.\n- 0 means empty.\n"
                "- Numbers 1–9 must appear exactly once in every row, column, and 3x3 block.\n"
                "- You may only fill empty cells.\n\nTask:\n- In each step, output ONE OR MORE valid moves.\n"
                f"- You may output up to {MAX_MOVES} moves per step.\n\nOutput format (STRICT):\nrow col value\n"
                "row col value\n\nExample:\n0 2 4\n1 3 5\n\n"
                f"Current step: {self.step}\nRemaining steps: {self.max_steps - self.step}\n\n"
                f"Current board:\n{board}\n")
        if self.stuck:
            text += ("\nYour previous response was invalid or had no effect. Please follow the rules and output "
                     "format strictly.")
        return text

    def _turn(self, reply: Experience, reward: float) -> Experience:
        return Experience(tokens=reply.tokens, prompt_length=reply.prompt_length, logprobs=reply.logprobs,
                          reward=reward, prompt_text=reply.prompt_text, response_text=reply.response_text,
                          info={"step": self.step})

    def run(self) -> list[Experience]:
        """Play until solved, a bad move, or the step limit."""
        turns: list[Experience] = []
        for _ in range(self.max_steps):
            (reply,) = self.model.chat([{"role": "user", "content": self.prompt()}])
            before = [row[:] for row in self.board]
            moves = parse_moves(reply.response_text or "")
            if moves is None or any(self.board[r][c] for r, c, _ in moves):
                turns.append(self._turn(reply, -1.0))
                break
            for r, c, v in moves:
                self.board[r][c] = v
            if self.board == before or not board_ok(self.board):
                turns.append(self._turn(reply, -1.0))
                break
            if self.board == self.solution:
                turns.append(self._turn(reply, 1.0))
                break
            turns.append(self._turn(reply, 0.0))
            self.stuck = self.board == before
            self.step += 1
        return turns
