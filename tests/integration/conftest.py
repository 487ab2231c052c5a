"""Make the real-process fixtures of ``flower_env`` and ``deployment`` available to these tests."""

from deployment import deployment, materials
from flower_env import flower, simulated_run

__all__ = ["deployment", "flower", "materials", "simulated_run"]
