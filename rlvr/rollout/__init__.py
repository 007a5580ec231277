from rlvr.rollout.base import RolloutEngine, SamplingParams
from rlvr.rollout.hf import HFEngine

__all__ = ["HFEngine", "RolloutEngine", "SamplingParams"]
