"""simple_mm_workflow: one question about images (or videos) of the row, as Trinity-RFT 0.6's workflow.

The row's format.image_key (format.video_key) column holds the images: file paths, URLs, `data:` URLs,
bytes or PIL images. `<image>` tags in the prompt mark where each goes; images beyond the tags come first.
The system prompt is Trinity's (reason in <think></think>, answer in \\boxed{}); the reward function
(default_reward_fn_type, math_boxed_reward when none) scores each reply against format.response_key.
The model wrapper sends each image to the sampler as an image chunk, which needs a vision-language base
model on the Tinker service; the local engine serves text models and refuses them, saying so.
"""

from __future__ import annotations

from typing import Any

from rft_runtime.workflows.experience import Experience
from rft_runtime.workflows.images import as_list, mm_message
from rft_runtime.workflows.protocol import Task
from rft_runtime.workflows.single_turn import BOXED_THINK_PROMPT, AsyncSingleTurnWorkflow, SingleTurnWorkflow


class SimpleMMWorkflow(SingleTurnWorkflow):
    """Trinity's simple_mm_workflow; see the module."""

    default_reward_fn = "math_boxed_reward"

    def reset(self, task: Task) -> None:
        """Take the task and its images / videos."""
        super().reset(task)
        self.system_prompt = BOXED_THINK_PROMPT
        fmt = task.format_args
        row = self.raw_task
        self.images = as_list(row.get(fmt.image_key)) if fmt.image_key else []
        self.videos = as_list(row.get(fmt.video_key)) if fmt.video_key else []

    def messages(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """The system prompt, then the prompt with its media."""
        return [{"role": "system", "content": self.system_prompt},
                mm_message(self.prompt_text(row), self.images, self.videos)]


class AsyncSimpleMMWorkflow(AsyncSingleTurnWorkflow, SimpleMMWorkflow):
    """simple_mm_workflow, sampled with chat_async."""

    async def run_async(self) -> list[Experience]:
        """Sample repeat_times replies and score each."""
        return await AsyncSingleTurnWorkflow.run_async(self)
