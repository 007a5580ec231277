from rlvr.sampling import gvm, vade, vas  # noqa: F401  (registers 'gvm', 'vade', 'vas')
from rlvr.sampling.fixed import FixedAllocator
from rlvr.sampling.uniform import UniformSampler

__all__ = ["FixedAllocator", "UniformSampler"]
