"""Stand-in for trinity.common.rewards.countdown_reward."""

from rft_runtime.workflows import rewards
from rft_runtime.workflows.protocol import as_reward_class

CountDownRewardFn = as_reward_class(rewards.countdown_reward)

__all__ = ["CountDownRewardFn"]
