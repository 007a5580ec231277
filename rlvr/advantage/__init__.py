from rlvr.advantage import bnpo, delta_l, rloo, spo, stratified  # noqa: F401  (registers the built-in estimators)
from rlvr.advantage.grpo import GRPO, DrGRPO, group_relative_advantages, group_stats, zero_std_fraction

__all__ = ["GRPO", "DrGRPO", "group_relative_advantages", "group_stats", "zero_std_fraction"]
