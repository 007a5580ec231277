"""Stage 3, advantage: one module per estimator family (each registers itself when rlvr.registry
looks a name up), and GRPO's group statistics that the others build on."""

from rlvr.advantage.grpo import GRPO, DrGRPO, group_relative_advantages, group_stats, zero_std_fraction

__all__ = ["GRPO", "DrGRPO", "group_relative_advantages", "group_stats", "zero_std_fraction"]
