"""Stand-in for trinity.common.rewards: RewardFn, the REWARD_FUNCTIONS registry (every name this runtime
knows, as classes), and Trinity's reward modules (math_reward, accuracy_reward, format_reward,
countdown_reward, dapo_reward, qwen25_eval) backed by this runtime's rewards."""

from pkgutil import extend_path

# a plugin folder's own trinity/... files (Trinity's, unchanged) join this package: the modules it lacks
__path__ = extend_path(__path__, __name__)

from trinity.utils.registry import Registry  # noqa: E402

from rft_runtime.workflows.protocol import RewardFn  # noqa: E402

REWARD_FUNCTIONS = Registry("reward_functions")

__all__ = ["REWARD_FUNCTIONS", "RewardFn"]
