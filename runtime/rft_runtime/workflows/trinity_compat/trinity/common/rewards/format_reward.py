"""Stand-in for trinity.common.rewards.format_reward."""

from rft_runtime.workflows import rewards
from rft_runtime.workflows.protocol import as_reward_class

FormatReward = as_reward_class(rewards.format_reward)

__all__ = ["FormatReward"]
