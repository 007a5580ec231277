from rlvr.learner.learner import Learner, lr_lambda
from rlvr.learner.logprobs import response_logprobs
from rlvr.learner.policy_loss import kl_estimate, kl_in_reward, ppo_clip

__all__ = ["Learner", "kl_estimate", "kl_in_reward", "lr_lambda", "ppo_clip", "response_logprobs"]
