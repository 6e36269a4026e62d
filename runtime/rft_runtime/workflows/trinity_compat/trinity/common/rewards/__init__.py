"""Stand-in for trinity.common.rewards: RewardFn and the REWARD_FUNCTIONS registry."""

from trinity.utils.registry import Registry

from rft_runtime.workflows.protocol import RewardFn

REWARD_FUNCTIONS = Registry("reward_functions")

__all__ = ["REWARD_FUNCTIONS", "RewardFn"]
