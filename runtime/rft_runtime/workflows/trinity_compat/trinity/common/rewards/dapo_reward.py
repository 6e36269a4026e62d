"""Stand-in for trinity.common.rewards.dapo_reward."""

from rft_runtime.workflows import rewards
from rft_runtime.workflows.protocol import as_reward_class

MathDAPORewardFn = as_reward_class(rewards.math_dapo_reward)

__all__ = ["MathDAPORewardFn"]
