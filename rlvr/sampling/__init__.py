from rlvr.sampling.fixed import FixedAllocator
from rlvr.sampling.uniform import UniformSampler

__all__ = ["FixedAllocator", "UniformSampler"]
