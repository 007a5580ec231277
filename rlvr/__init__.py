"""rlvr: reinforcement learning with verifiable rewards for LLM post-training."""

__version__ = "0.1.0"
