"""An episode's environment tokens are context only: no gradient, counted in no normaliser."""

import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr.learner import BatchingConfig, Learner, OptimConfig, ppo_clip
from rlvr.learner.aggregation import seq_mean_token_mean, token_mean
from rlvr.types import AdvantageBatch, Prompt, Rollouts, ScoredRollouts


def learner_for(model, agg):
    optim = OptimConfig(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, schedule="constant",
                        min_lr_ratio=0.0, total_steps=10, max_grad_norm=None)
    batching = BatchingConfig(mini_batches_per_step=1, epochs_per_step=1, micro_batch_tokens=10_000,
                              max_new_tokens=16, pad_id=0, seed=0)
    return Learner(model, None, Accelerator(cpu=True), policy_loss=ppo_clip, aggregation=agg, optim=optim,
                   batching=batching, temperature=1.0)


def episode_batch(tok):
    """Two episodes: model tokens, then inserted environment tokens, then model tokens again."""
    p = Prompt("p#0", "q", tok.encode("12*7=", add_special_tokens=False), "84", {})
    model1, env, model2 = [tok.encode(s, add_special_tokens=False) for s in ("ab", "<|im_start|>tool\n84", "84")]
    rows = [model1 + env + model2, model1[:1] + env + model2 + model2]
    kinds = [[1] * len(model1) + [0] * len(env) + [1] * len(model2), [1] + [0] * len(env) + [1] * 2 * len(model2)]
    width = max(map(len, rows))
    ids = torch.zeros(2, width, dtype=torch.long)
    mask, env_mask = torch.zeros(2, width), torch.zeros(2, width)
    for i, (r, k) in enumerate(zip(rows, kinds)):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = torch.tensor(k, dtype=torch.float)
        env_mask[i, : len(r)] = 1 - mask[i, : len(r)]
    ro = Rollouts([p], torch.tensor([0, 0]), ids, mask, torch.zeros(2, width), ["84", "8484"], ["stop", "stop"],
                  env_mask=env_mask, contexts=["", ""], episodes=[{}, {}])
    adv = torch.tensor([1.5, -0.5])
    return AdvantageBatch(ScoredRollouts(ro, torch.zeros(2), {}, torch.zeros(2, dtype=torch.bool)), adv,
                          torch.ones(2), None, None), p, rows, kinds, adv


def reference_grads(model, p, rows, kinds, adv, per_sequence: bool):
    """-A * mean (or per-sequence mean) of log pi over the model's tokens only, each token conditioned
    on everything before it, the environment's tokens included."""
    model.zero_grad()
    total, count = 0.0, sum(sum(k) for k in kinds)
    for r, k, a in zip(rows, kinds, adv):
        seq = torch.tensor([p.token_ids + r])
        logp = torch.log_softmax(model(seq).logits[0, :-1].float(), -1)
        lp = logp[torch.arange(len(p.token_ids) - 1, seq.shape[1] - 1), torch.tensor(r)]
        km = torch.tensor(k, dtype=torch.float)
        if per_sequence:
            total = total + (-a * (lp * km).sum() / km.sum()) / len(rows)
        else:
            total = total + (-a * (lp * km).sum()) / count
    total.backward()
    return torch.cat([q.grad.flatten() for q in model.parameters()])


def test_environment_tokens_get_no_gradient_and_count_in_no_normaliser(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for agg, per_sequence in ((token_mean, False), (seq_mean_token_mean, True)):
        batch, p, rows, kinds, adv = episode_batch(tok)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        learner_for(model, agg).step(batch)
        got = torch.cat([q.grad.flatten() for q in model.parameters()])
        want = reference_grads(AutoModelForCausalLM.from_pretrained(tiny_model_dir), p, rows, kinds, adv, per_sequence)
        assert got.abs().sum() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_environment_tokens_are_attended_to(tiny_model_dir):
    """Other inserted tokens change the model tokens' gradient: they are the context of the next turn."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    grads = []
    for swap in (False, True):
        batch, *_ = episode_batch(tok)
        ro = batch.scored.rollouts
        if swap:
            ro.response_ids[ro.env_mask.bool()] = tok.encode("9", add_special_tokens=False)[0]
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        learner_for(model, token_mean).step(batch)
        grads.append(torch.cat([q.grad.flatten() for q in model.parameters()]))
    assert (grads[0] - grads[1]).abs().max() > 1e-6
