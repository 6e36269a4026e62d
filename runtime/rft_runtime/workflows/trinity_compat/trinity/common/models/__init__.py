"""Stand-in for trinity.common.models."""
