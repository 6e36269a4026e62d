"""Stand-in for trinity.common.config: the two dataclasses a Task carries."""

from rft_runtime.workflows.protocol import FormatConfig, GenerationConfig

__all__ = ["FormatConfig", "GenerationConfig"]
