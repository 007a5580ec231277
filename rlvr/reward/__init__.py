"""Stage 2, reward: built-in verifiers and the runner that scores a step with weighted rewards."""

from rlvr.reward.builtins import ISOLATE
from rlvr.reward.call import RewardError
from rlvr.reward.rollouts import score_rollouts
from rlvr.reward.runner import RewardResult, RewardRunner, RewardSpec, check_specs

__all__ = ["ISOLATE", "RewardError", "RewardResult", "RewardRunner", "RewardSpec", "check_specs", "score_rollouts"]
