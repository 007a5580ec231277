"""LoRA (model.lora) against full fine-tuning: what is trained, stored and spent, side by side.

    python benchmarks/lora.py                                  # the quickstart's tiny model and a 0.4B shape
    python benchmarks/lora.py --shapes tiny --steps 5          # a few seconds

For each model shape, full fine-tuning and LoRA (rank --rank, alpha 2 * rank, every linear layer but
the output head: model.lora's all-linear) each run in a fresh process, so that peak RSS is theirs
alone. The model is a random Qwen2 built from its config (nothing is downloaded); the learner is
rlvr's `Learner` as rlvr/run/build.py makes it (ppo_clip, token_mean, AdamW, max grad norm 1, one
mini-batch, fp32 on CPU), the batch a synthetic AdvantageBatch (benchmarks/gpu_step.py:
`synthetic_batch`). Columns:

  params trained   parameters with requires_grad (what AdamW holds), and their share of the model
  optimizer state  bytes of AdamW's tensors after the first step (two moments per trained tensor)
  checkpoint       bytes on disk of a periodic checkpoint written by rlvr's save_checkpoint (LoRA:
                   adapter/ + state; full: model/ + state); the LoRA run's last checkpoint adds the
                   merged model/ (the size of the full run's model/ weights)
  step s           median wall time of Learner.step over --steps after one warm-up step
  peak RSS         the process's peak resident memory (model built, steps run, checkpoint written)

Shapes: tiny = the quickstart model (hidden 128, 2 layers, 4 heads, 13-token vocabulary, 0.3M
parameters); mid = hidden 896, 24 layers, 14 heads (2 KV), intermediate 4864, vocabulary 32000, tied
embeddings (0.39B: Qwen2.5-0.5B's body with a smaller vocabulary, so that embeddings do not dominate).
Threads: the tiny model's steps are small operations, which a second thread only slows down on a
shared 2-core machine (measured 0.09 s with one thread, 2.4 s with two while other jobs ran); the
mid model's matrix products use both cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

SHAPES = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                 intermediate_size=256, vocab_size=13, samples=256, prompt_tokens=5, response_tokens=4, threads=1),
    "mid": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, head_dim=64,
                intermediate_size=4864, vocab_size=32000, samples=8, prompt_tokens=32, response_tokens=32, threads=2),
}


def measure(shape: str, use_lora: bool, rank: int, steps: int) -> dict[str, float]:
    """One configuration, in this process: the numbers of one row of the table."""
    import torch
    from accelerate import Accelerator
    from gpu_step import synthetic_batch, timed
    from transformers import AutoModelForCausalLM, Qwen2Config

    from rlvr.learner import BatchingConfig, Learner, OptimConfig, lora
    from rlvr.learner.checkpoint import save_checkpoint
    from rlvr.models.tiny import build_tiny_tokenizer
    from rlvr.registry import AGGREGATION, POLICY_LOSS, build_plugin

    dims = dict(SHAPES[shape])
    samples, prompt_tokens, response_tokens = dims.pop("samples"), dims.pop("prompt_tokens"), dims.pop("response_tokens")
    dims.pop("threads")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen2Config(**dims, tie_word_embeddings=True, pad_token_id=0),
                                             dtype=torch.float32)
    total = sum(p.numel() for p in model.parameters())
    if use_lora:
        model = lora.add_adapters(model, r=rank, alpha=2 * rank, dropout=0.0, target_modules="all-linear")
    acc = Accelerator(cpu=True)
    learner = Learner(
        model, None, acc, policy_loss=build_plugin(POLICY_LOSS.get("ppo_clip"), {}, {}),
        aggregation=build_plugin(AGGREGATION.get("token_mean"), {}, {}),
        optim=OptimConfig(lr=1e-5, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, schedule="constant",
                          min_lr_ratio=0.0, total_steps=steps + 1, max_grad_norm=1.0),
        batching=BatchingConfig(mini_batches_per_step=1, epochs_per_step=1, micro_batch_tokens=4096,
                                max_new_tokens=response_tokens, pad_id=0, seed=0),
        temperature=1.0)
    batch = synthetic_batch(samples, prompt_tokens, response_tokens, dims["vocab_size"])
    step_s, _ = timed(lambda: learner.step(batch), 1, steps)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optim_bytes = sum(t.numel() * t.element_size() for s in learner.optimizer.state.values()
                      for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
    work = Path(tempfile.mkdtemp(prefix="lora-bench-"))
    try:
        tok = build_tiny_tokenizer()
        kw = dict(model=learner.model, tokenizer=tok, state={"step": 1, "plugins": {"learner": learner.state_dict()}},
                  config_yaml="", keep_last=2, accelerator=acc, shards=learner.save_shards)
        periodic = save_checkpoint(work, 1, **kw)
        ckpt_bytes = sum(f.stat().st_size for f in periodic.rglob("*") if f.is_file())
        export_bytes = 0
        if use_lora:
            last = save_checkpoint(work, 2, **kw, export=True)
            export_bytes = sum(f.stat().st_size for f in (last / "model").glob("*.safetensors"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"total": total, "trained": trained, "optim_bytes": optim_bytes, "ckpt_bytes": ckpt_bytes,
            "export_bytes": export_bytes, "step_s": step_s,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # Linux reports KiB


def run_child(shape: str, use_lora: bool, rank: int, steps: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", shape, str(int(use_lora)), "--rank", str(rank),
                          "--steps", str(steps)], check=True, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                              "OMP_NUM_THREADS": str(SHAPES[shape]["threads"])})
    return json.loads(out.stdout.strip().splitlines()[-1])


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["tiny", "mid"])
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after one warm-up)")
    ap.add_argument("--child", nargs=2, metavar=("SHAPE", "LORA"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], bool(int(args.child[1])), args.rank, args.steps)))
        return
    t0 = time.time()
    for shape in args.shapes:
        full, low = run_child(shape, False, args.rank, args.steps), run_child(shape, True, args.rank, args.steps)
        d = SHAPES[shape]
        print(f"\n{shape}: Qwen2 hidden {d['hidden_size']}, {d['num_hidden_layers']} layers, vocabulary "
              f"{d['vocab_size']}, {full['total'] / 1e6:.2f}M parameters; {d['samples']} samples x ({d['prompt_tokens']} "
              f"prompt + {d['response_tokens'] // 2}..{d['response_tokens']} response tokens); LoRA r={args.rank}, "
              f"alpha={2 * args.rank}, all-linear; {d['threads']} thread(s); median of {args.steps} steps after 1 "
              "warm-up\n")
        print("| run  | params trained        | optimizer state | checkpoint | step s  | peak RSS  |")
        print("|------|-----------------------|-----------------|------------|---------|-----------|")
        for name, r in (("full", full), ("lora", low)):
            share = f"{r['trained']:,} ({r['trained'] / r['total']:.1%})"
            print(f"| {name:<4} | {share:<21} | {size(r['optim_bytes']):>15} | {size(r['ckpt_bytes']):>10} "
                  f"| {r['step_s']:7.3f} | {size(r['peak_rss']):>9} |")
        ratio = {k: low[k] / full[k] for k in ("trained", "optim_bytes", "ckpt_bytes", "step_s", "peak_rss")}
        print(f"| lora/full | {ratio['trained']:.4f}x | {ratio['optim_bytes']:.4f}x | {ratio['ckpt_bytes']:.4f}x "
              f"| {ratio['step_s']:.2f}x | {ratio['peak_rss']:.2f}x |")
        print(f"\nLoRA's last checkpoint also holds the merged model/ ({size(low['export_bytes'])} of weights).")
    print(f"\n({time.time() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
