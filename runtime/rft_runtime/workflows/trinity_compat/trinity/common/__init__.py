"""Stand-in for trinity.common."""
