"""Make the real-process fixtures of ``flower_env`` and ``deployment`` available to these tests."""

from deployment import deployment, materials
from flower_env import flower, flower_app, simulated_run

__all__ = ["deployment", "flower", "flower_app", "materials", "simulated_run"]
