"""Stand-in for trinity.common.rewards.math_reward."""

from rft_runtime.workflows import rewards
from rft_runtime.workflows.protocol import as_reward_class

MathRewardFn = as_reward_class(rewards.math_reward)
MathBoxedRewardFn = as_reward_class(rewards.math_boxed_reward)

__all__ = ["MathBoxedRewardFn", "MathRewardFn"]
