"""Route medsilo's module loggers through Flower's log handlers (no root logger changes)."""

from __future__ import annotations

import logging

from flwr.supercore.logger import FLOWER_LOGGER

__all__ = ["use_flower_logging"]

_PACKAGES = ("common", "client", "server")


def use_flower_logging(level: int = logging.INFO) -> None:
    """Send ``common.*``, ``client.*`` and ``server.*`` records to Flower's handlers."""
    for name in _PACKAGES:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers = list(FLOWER_LOGGER.handlers)
        logger.propagate = False
