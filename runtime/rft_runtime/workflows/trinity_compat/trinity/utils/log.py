"""Stand-in for trinity.utils.log."""

import logging


def get_logger(name: str | None = None, level: str | None = None, in_ray_actor: bool = False) -> logging.Logger:
    """A standard logger (the runtime configures handlers and levels)."""
    logger = logging.getLogger(name)
    if level:
        logger.setLevel(level.upper())
    return logger
