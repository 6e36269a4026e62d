"""Stand-in for trinity.common.models.model: the wrapper workflows receive as `self.model`."""

from rft_runtime.workflows.model import ModelWrapper

__all__ = ["ModelWrapper"]
