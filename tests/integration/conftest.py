"""Make the real-process fixtures of ``flower_env`` and ``deployment`` available to these tests."""

from deployment import consortium
from flower_env import flower, flower_app, simulated_run

__all__ = ["consortium", "flower", "flower_app", "simulated_run"]
