"""torchrun --nproc_per_node 2 nonfinite_step.py MODEL_DIR STRATEGY OUT_DIR

Two learner steps on the fixed batch of tests/integration/scripts/learner_step.py. In the first,
only rank 1's advantages are NaN: every rank must skip the update (the decision is collective),
leaving the weights as they were. The second is finite and must apply. Each rank writes what it saw to
OUT_DIR/rank<r>.json (files, not stdout: the two ranks' lines can interleave).
"""

import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration" / "scripts"))
from learner_step import T, local_batch

from rlvr.learner import BatchingConfig, Learner, OptimConfig, ppo_clip
from rlvr.learner.distributed import make_accelerator
from rlvr.registry import AGGREGATION


def main(model_dir: str, strategy: str, out_dir: str) -> None:
    acc = make_accelerator(strategy, "no", 1.0)
    learner = Learner(AutoModelForCausalLM.from_pretrained(model_dir), None, acc, policy_loss=ppo_clip,
                      aggregation=AGGREGATION.get("token_mean"),
                      optim=OptimConfig(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0,
                                        schedule="constant", min_lr_ratio=0.0, total_steps=2, max_grad_norm=1.0),
                      batching=BatchingConfig(mini_batches_per_step=1, epochs_per_step=1, micro_batch_tokens=40,
                                              max_new_tokens=T, pad_id=0, seed=0),
                      temperature=1.0)
    before = {n: t.detach().cpu().clone() for n, t in learner.full_weights()}  # collective
    batch = local_batch(acc.process_index, acc.num_processes)
    good = batch.advantages.clone()
    if acc.process_index == 1:
        batch.advantages = torch.full_like(batch.advantages, float("nan"))
    first = learner.step(batch, step=1)
    after = {n: t.detach().cpu().clone() for n, t in learner.full_weights()}
    batch.advantages = good
    second = learner.step(batch, step=2)
    final = {n: t.detach().cpu().clone() for n, t in learner.full_weights()}
    (Path(out_dir) / f"rank{acc.process_index}.json").write_text(json.dumps({
        "rank": acc.process_index, "skipped": [first["learner/nonfinite_skipped"], second["learner/nonfinite_skipped"]],
        "what": learner.guard.what, "unchanged": all(torch.equal(before[k], after[k]) for k in before),
        "moved": any(not torch.equal(after[k], final[k]) for k in after),
        "finite": all(bool(torch.isfinite(t).all()) for t in final.values())}))
    acc.wait_for_everyone()
    sys.stderr.flush()
    os._exit(0)  # as learner_step.py: no gloo teardown (it aborted some exits)


if __name__ == "__main__":
    main(*sys.argv[1:4])
