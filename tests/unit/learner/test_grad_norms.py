"""Per-sample gradient norms (GVM's stage 1) computed by the learner, and its refusal under
strategies whose processes hold only shards of each gradient."""

import pytest
import torch
from accelerate import Accelerator

from rlvr.buffer import pack
from rlvr.learner import BatchingConfig, Learner, OptimConfig, ppo_clip
from rlvr.learner.aggregation import token_mean
from rlvr.learner.batching import pairs_batch
from rlvr.learner.grad_norms import whole_gradients_problem
from rlvr.learner.logprobs import response_logprobs
from rlvr.types import LossNorm


def make_learner(model):
    return Learner(model, None, Accelerator(cpu=True), policy_loss=ppo_clip, aggregation=token_mean,
                   optim=OptimConfig(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0,
                                     schedule="constant", min_lr_ratio=0.0, total_steps=1, max_grad_norm=1.0),
                   batching=BatchingConfig(mini_batches_per_step=1, epochs_per_step=1, micro_batch_tokens=64,
                                           max_new_tokens=4, pad_id=0, seed=0),
                   temperature=0.7)


def test_each_pair_gets_the_norm_of_its_own_gradient(tiny):
    model, tok = tiny
    learner = make_learner(model)
    prompts, responses = [tok("1+2=").input_ids, tok("40+41=").input_ids], [tok("3").input_ids, tok("81").input_ids]
    got = learner.grad_norms(prompts, responses, "embed_tokens")
    param = model.get_input_embeddings().weight
    for prompt, response, norm in zip(prompts, responses, got):
        mb = pack(pairs_batch([prompt], [response], 0), torch.arange(1), LossNorm(1.0, 1.0, 1), 10**9, 0)[0]
        model.zero_grad(set_to_none=True)
        lp, _ = response_logprobs(model, mb, 0.7)
        (-lp.sum()).backward()
        assert norm == pytest.approx(float(param.grad.norm()), rel=1e-6)
    assert got[0] != got[1]
    model.zero_grad(set_to_none=True)
    assert learner.grad_norms([], [], "embed_tokens") == []
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="sampling.allocator.act_params: no parameter name contains 'nope'"):
        learner.grad_norms(prompts, responses, "nope")


@pytest.mark.parametrize("strategy", ["fsdp2", "zero2", "zero3"])
def test_sharded_gradients_are_refused_in_the_words_of_the_config_check(tiny, strategy):
    learner = make_learner(tiny[0])
    learner.strategy = strategy  # what strategy_of reports under that launcher
    with pytest.raises(ValueError) as e:
        learner.grad_norms([[1]], [[2]], "embed_tokens")
    assert str(e.value) == ("sampling.allocator needs whole local gradients (learner.strategy: ddp, or a single "
                            f"process); {strategy} shards them")
    assert whole_gradients_problem("sampling.allocator", "ddp") is None
    assert whole_gradients_problem("sampling.allocator", "single") is None
