from rlvr.learner.batching import BatchingConfig, skip_is_exact
from rlvr.learner.learner import Learner
from rlvr.learner.logprobs import response_logprobs
from rlvr.learner.optim import OptimConfig, lr_lambda
from rlvr.learner.policy_loss import KLSettings, kl_estimate, kl_in_reward, ppo_clip

__all__ = ["BatchingConfig", "KLSettings", "Learner", "OptimConfig", "kl_estimate", "kl_in_reward", "lr_lambda",
           "ppo_clip", "response_logprobs", "skip_is_exact"]
