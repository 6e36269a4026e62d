"""Stand-in for trinity.common.rewards.reward_fn."""

from rft_runtime.workflows.protocol import RewardFn

__all__ = ["RewardFn"]
