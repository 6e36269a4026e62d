"""Stand-in for trinity.common.workflows.step_wise_workflow."""

from rft_runtime.workflows.step_wise import (
    AsyncRewardPropagationWorkflow,
    AsyncStepWiseRewardWorkflow,
    RewardPropagationWorkflow,
    StepWiseRewardWorkflow,
)

__all__ = ["AsyncRewardPropagationWorkflow", "AsyncStepWiseRewardWorkflow", "RewardPropagationWorkflow",
           "StepWiseRewardWorkflow"]
