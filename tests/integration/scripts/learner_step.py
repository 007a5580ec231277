"""One learner step on a fixed global batch; run alone or under torchrun (gloo, CPU).

    python learner_step.py MODEL_DIR OUT.pt [AGGREGATION [STRATEGY [EPOCHS [CHUNK [SHARE]]]]]
    torchrun --nproc_per_node 2 learner_step.py MODEL_DIR OUT.pt [AGGREGATION [STRATEGY [EPOCHS [CHUNK [SHARE]]]]]

Every process builds the same 4-prompt x 3-sample batch from a fixed seed and keeps its share of
the prompts (complete groups), exactly as the training loop does. STRATEGY is a learner.strategy
(default ddp). With EPOCHS > 1 the step recomputes old log-probs first and adds a KL term to a
reference model, as the loop does, so every collective path of the learner runs. CHUNK is
learner.logprob_chunk_tokens (default 512: one chunk here; 0 = full logits). SHARE is
learner.share_prompts (1 or 0, default 1 as in the learner; it shares on one process only). Rank 0 saves the
global metrics, the gradients (unsharded strategies; they are still in place after a single
optimiser step) and the updated weights gathered with `full_weights()`, so the caller can
compare 1 process with 2.
"""

import os
import sys

import torch
from transformers import AutoModelForCausalLM

from rlvr.learner import BatchingConfig, KLSettings, Learner, OptimConfig, ppo_clip
from rlvr.learner.distributed import make_accelerator, whole_model_init
from rlvr.registry import AGGREGATION
from rlvr.types import AdvantageBatch, Prompt, Rollouts, ScoredRollouts

P, G, T = 4, 3, 6


def global_batch() -> list[tuple[Prompt, list[int], float]]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for j in range(P):
        prompt = Prompt(f"p#{j}", "", torch.randint(4, 90, (3 + j,), generator=g).tolist(), "0", {})
        for _ in range(G):
            # later prompts get longer answers, so the two processes pack different micro-batch counts
            n = int(torch.randint(1 + j, T + 1, (1,), generator=g)) if j < 2 else T
            rows.append((prompt, torch.randint(4, 90, (n,), generator=g).tolist(), float(torch.randn(1, generator=g))))
    return rows


def local_batch(rank: int, world: int) -> AdvantageBatch:
    rows = global_batch()
    per = P // world
    mine = rows[rank * per * G : (rank + 1) * per * G]
    prompts = list(dict.fromkeys(p.uid for p, _, _ in mine))
    by_uid = {p.uid: p for p, _, _ in mine}
    n = len(mine)
    ids = torch.zeros(n, T, dtype=torch.long)
    mask = torch.zeros(n, T)
    for i, (_, resp, _) in enumerate(mine):
        ids[i, : len(resp)] = torch.tensor(resp)
        mask[i, : len(resp)] = 1
    ro = Rollouts([by_uid[u] for u in prompts], torch.tensor([prompts.index(p.uid) for p, _, _ in mine]),
                  ids, mask, torch.zeros(n, T), [""] * n, ["stop"] * n)
    scored = ScoredRollouts(ro, torch.zeros(n), {}, torch.zeros(n, dtype=torch.bool))
    return AdvantageBatch(scored, torch.tensor([a for _, _, a in mine]), torch.ones(n), None, None)


def main(model_dir: str, out: str, aggregation: str = "seq_mean_token_mean", strategy: str = "ddp",
         epochs: str = "1", chunk: str = "512", share: str = "1") -> None:
    epochs_per_step = int(epochs)
    kl_coef = 0.1 if epochs_per_step > 1 else 0.0
    # clipping on for the multi-epoch runs (DeepSpeed clips itself: its norm and clip must match ours)
    max_grad_norm = 0.05 if epochs_per_step > 1 else None
    acc = make_accelerator(strategy, "no", max_grad_norm)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ref = None
    if kl_coef:
        with whole_model_init():
            ref = AutoModelForCausalLM.from_pretrained(model_dir).eval().requires_grad_(False)
    learner = Learner(model, ref, acc, policy_loss=ppo_clip, aggregation=AGGREGATION.get(aggregation),
                      optim=OptimConfig(lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999), warmup_steps=0,
                                        schedule="constant", min_lr_ratio=0.0, total_steps=1,
                                        max_grad_norm=max_grad_norm),
                      batching=BatchingConfig(mini_batches_per_step=1, epochs_per_step=epochs_per_step,
                                              micro_batch_tokens=40, max_new_tokens=T, pad_id=0, seed=0),
                      temperature=1.0, kl=KLSettings(coef=kl_coef, estimator="k3", in_loss=True),
                      logprob_chunk_tokens=int(chunk), share_prompts=share == "1")
    batch = local_batch(acc.process_index, acc.num_processes)
    if learner.needs_old_logprobs:
        batch.old_logprobs = learner.logprobs(batch, use_ref=False)
    if ref is not None:
        batch.ref_logprobs = learner.logprobs(batch, use_ref=True)
    metrics = learner.step(batch)
    grads = None
    if learner.strategy in ("single", "ddp"):
        grads = {k: p.grad.detach().clone() for k, p in learner.unwrapped.named_parameters()}
    weights = {name: t.detach().cpu().clone() for name, t in learner.full_weights()}  # collective: every rank
    if acc.is_main_process:
        torch.save({"metrics": metrics, "grads": grads, "weights": weights, "world": acc.num_processes,
                    "strategy": learner.strategy}, out)
    acc.wait_for_everyone()
    # leave without tearing gloo down: its threads aborted ~1 exit in 4 ("terminate called without
    # an active exception") and destroy_process_group hung once; the result is already on disk
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:8])
