"""Make the real-process fixtures of ``flower_env`` available to these tests."""

from flower_env import flower

__all__ = ["flower"]
