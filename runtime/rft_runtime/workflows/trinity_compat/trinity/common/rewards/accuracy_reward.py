"""Stand-in for trinity.common.rewards.accuracy_reward."""

from rft_runtime.workflows import rewards
from rft_runtime.workflows.protocol import as_reward_class

AccuracyReward = as_reward_class(rewards.accuracy_reward)

__all__ = ["AccuracyReward"]
