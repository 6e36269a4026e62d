"""Stand-in for trinity.utils."""
