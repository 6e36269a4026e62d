"""Stand-in for trinity.common.experience."""

from rft_runtime.workflows.experience import EID, Experience

__all__ = ["EID", "Experience"]
