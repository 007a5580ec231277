"""Time rlvr's real learner step on a 0.5B-shaped Qwen2 with random weights (for a GPU).

    python benchmarks/gpu_step.py --shape 0.5b                      # Qwen2.5-0.5B shape, defaults below
    python benchmarks/gpu_step.py --shape 0.5b --gradient-checkpointing --dtype-policy bf16
    python benchmarks/gpu_step.py --shape tiny --steps 2 --warmup 1 --samples 4 \\
        --prompt-tokens 16 --response-tokens 16                     # CPU smoke test, a few seconds

What runs is `rlvr.learner.Learner`, built as rlvr/run/build.py builds it: the accelerator of
`learner.strategy: auto` / `mixed_precision: auto` (bf16 autocast on a CUDA GPU with bf16, fp32 on
CPU), the `ppo_clip` policy loss and `token_mean` aggregation from the registries, AdamW, max grad
norm 1, one mini-batch and one epoch per step, no KL (rlvr's defaults). The model is built from a
Qwen2Config (hidden 896, 24 layers, 14 heads, 2 KV heads, head_dim 64, intermediate 4864, vocab
151936, tied embeddings), nothing is downloaded. The batch is a synthetic AdvantageBatch of the real
rlvr types: groups of 8 samples share a random prompt of --prompt-tokens tokens, response lengths are
uniform between half and all of --response-tokens, token ids and advantages are random.

Two passes are timed, each as the median over --steps after --warmup untimed runs, with CUDA
synchronised around each run:
  step      Learner.step: forward with entropy, ppo_clip, backward, clip, AdamW (the update)
  logprobs  Learner.logprobs(use_ref=False): the no-grad forward that gives old log-probs

Tokens counted ("tokens/step"): every prompt token plus every response token of every sample, padding
excluded (the micro-batches are left/right padded; the padded count is printed apart). "resp tokens"
is the response tokens alone, the ones the loss is over. tokens/s is tokens/step over the median
time: the work a user gets done. With learner.share_prompts (rlvr's default; `--no-share-prompts`
turns it off; gradient checkpointing turns it off too) each group's prompt runs once per
micro-batch, so the model computes fewer tokens than it covers: "computed" counts them (each
distinct prompt of a micro-batch once, plus the responses), and MFU uses that count, not
tokens/step.

MFU = 6 * N_params * computed / step_s / peak_flops (2 * N instead of 6 * N for the forward-only
logprobs pass), with peak_flops the dense bf16 peak of the GPU (table below, else --peak-tflops).
It is an approximation: 6*N*tokens ignores attention FLOPs (which grow with sequence length), and
N counts the tied embedding / LM-head matrix (136M of 494M) as if it ran on every token, while the
input embedding is a lookup and the learner's forward only computes logits for the response
positions (logits_to_keep), so the head's real FLOPs are fewer. Padding tokens are computed but not
counted, so they lower MFU. Without a GPU the MFU and peak-memory columns read "n/a".
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from rlvr.buffer import pack
from rlvr.learner import BatchingConfig, Learner, OptimConfig
from rlvr.learner.distributed import make_accelerator, resolve_strategy
from rlvr.learner.logprobs import prompt_groups
from rlvr.registry import AGGREGATION, POLICY_LOSS, build_plugin
from rlvr.types import AdvantageBatch, LossNorm, Prompt, Rollouts, ScoredRollouts

SHAPES = {
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, head_dim=64,
                 intermediate_size=4864, vocab_size=151936),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 intermediate_size=128, vocab_size=1024),
}
# dense bf16 peak FLOP/s (no sparsity), matched as substrings of torch.cuda.get_device_name, in order
PEAK_FLOPS = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100 SXM", 989e12), ("H100 80GB HBM3", 989e12),
              ("A100", 312e12), ("L40S", 362e12)]
GROUP = 8  # samples per prompt
PAD_ID = 0


def build_model(shape: str, dtype_policy: str, checkpointing: bool) -> torch.nn.Module:
    config = Qwen2Config(**SHAPES[shape], tie_word_embeddings=True, max_position_embeddings=32768,
                         rope_theta=1e6, rms_norm_eps=1e-6, pad_token_id=PAD_ID)
    # rlvr's default (model.dtype auto): fp32 master weights, bf16 autocast from accelerate on GPU
    dtype = torch.bfloat16 if dtype_policy == "bf16" else torch.float32
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init on the GPU is quick
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def synthetic_batch(samples: int, prompt_tokens: int, response_tokens: int, vocab: int) -> AdvantageBatch:
    g = torch.Generator().manual_seed(0)
    prompts = [Prompt(f"synthetic#{j}", "", torch.randint(1, vocab, (prompt_tokens,), generator=g).tolist(), None, {})
               for j in range((samples + GROUP - 1) // GROUP)]
    lengths = torch.randint(max(1, response_tokens // 2), response_tokens + 1, (samples,), generator=g)
    mask = (torch.arange(response_tokens) < lengths[:, None]).float()
    ids = torch.randint(1, vocab, (samples, response_tokens), generator=g) * mask.long()  # pad id 0 after the end
    ro = Rollouts(prompts, torch.arange(samples) // GROUP, ids, mask, torch.zeros(samples, response_tokens),
                  [""] * samples, ["stop"] * samples)
    scored = ScoredRollouts(ro, torch.zeros(samples), {}, torch.zeros(samples, dtype=torch.bool))
    return AdvantageBatch(scored, torch.randn(samples, generator=g), torch.ones(samples), None, None)


def timed(fn: Callable[[], object], warmup: int, steps: int) -> tuple[float, float | None]:
    """(median seconds per call, peak GPU bytes allocated during the timed calls or None on CPU)."""
    cuda = torch.cuda.is_available()
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), torch.cuda.max_memory_allocated() if cuda else None


def computed_tokens(mbs: list, share: bool) -> int:
    """Tokens the model runs for these micro-batches: all real tokens, or with shared prompts each
    distinct prompt of a micro-batch once plus every response token.
    Example: one micro-batch of 8 samples of one 256-token prompt with 300 response tokens each ->
    8 * 556 = 4448 unshared, 256 + 8 * 300 = 2656 shared."""
    total = 0
    for mb in mbs:
        t = mb.response_ids.shape[1]
        groups = prompt_groups(mb.input_ids, mb.attention_mask, t) if share else None
        if groups is None:
            total += int(mb.attention_mask.sum())
        else:
            p = mb.input_ids.shape[1] - t
            total += int(mb.attention_mask[groups[0], :p].sum()) + int(mb.attention_mask[:, p:].sum())
    return total


def peak_flops(name: str, override_tflops: float | None) -> float | None:
    if override_tflops is not None:
        return override_tflops * 1e12
    return next((f for key, f in PEAK_FLOPS if key in name), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="0.5b")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--response-tokens", type=int, default=512)
    ap.add_argument("--micro-batch-tokens", type=int, default=8192, help="learner.micro_batch_tokens")
    ap.add_argument("--steps", type=int, default=5, help="timed runs of each pass")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs before them")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--dtype-policy", choices=["bf16-autocast", "bf16"], default="bf16-autocast",
                    help="bf16-autocast: fp32 master weights + bf16 autocast (rlvr's GPU default); "
                         "bf16: bf16 weights, gradients and AdamW state")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak, for GPUs not in the table")
    ap.add_argument("--share-prompts", action=argparse.BooleanOptionalAction, default=True,
                    help="learner.share_prompts (rlvr's default: on)")
    args = ap.parse_args()

    acc = make_accelerator(resolve_strategy("auto"), "auto", 1.0)
    model = build_model(args.shape, args.dtype_policy, args.gradient_checkpointing)
    n_params = sum(p.numel() for p in model.parameters())  # tied embedding counted once
    learner = Learner(
        model, None, acc,
        policy_loss=build_plugin(POLICY_LOSS.get("ppo_clip"), {}, {}),
        aggregation=build_plugin(AGGREGATION.get("token_mean"), {}, {}),
        optim=OptimConfig(lr=1e-6, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, schedule="constant",
                          min_lr_ratio=0.0, total_steps=args.warmup + args.steps, max_grad_norm=1.0),
        batching=BatchingConfig(mini_batches_per_step=1, epochs_per_step=1, micro_batch_tokens=args.micro_batch_tokens,
                                max_new_tokens=args.response_tokens, pad_id=PAD_ID, seed=0),
        temperature=1.0, share_prompts=args.share_prompts,
    )
    batch = synthetic_batch(args.samples, args.prompt_tokens, args.response_tokens, SHAPES[args.shape]["vocab_size"])
    resp_tokens = int(batch.scored.rollouts.lengths.sum())
    tokens = args.samples * args.prompt_tokens + resp_tokens
    mbs = pack(batch, torch.arange(args.samples), LossNorm(1.0, 1.0, 1), args.micro_batch_tokens, PAD_ID)
    padded = sum(mb.input_ids.numel() for mb in mbs)
    computed = computed_tokens(mbs, args.share_prompts and not args.gradient_checkpointing)

    step_s, step_mem = timed(lambda: learner.step(batch), args.warmup, args.steps)
    lp_s, lp_mem = timed(lambda: learner.logprobs(batch, use_ref=False), args.warmup, args.steps)

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (no GPU)"
    peak = peak_flops(gpu, args.peak_tflops) if torch.cuda.is_available() else None
    print(f"\n{args.shape} Qwen2, {n_params / 1e6:.1f}M parameters, {args.samples} samples x ({args.prompt_tokens} prompt "
          f"+ {args.response_tokens // 2}..{args.response_tokens} response tokens), {len(mbs)} micro-batch(es) of "
          f"<= {args.micro_batch_tokens} tokens ({padded} with padding), dtype policy {args.dtype_policy} "
          f"(accelerate mixed_precision {acc.mixed_precision}), gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'}, shared prompts "
          f"{'on' if args.share_prompts and not args.gradient_checkpointing else 'off'}, median of {args.steps} after "
          f"{args.warmup} warm-up\n")
    print("| pass     | device               | params (M) | tokens/step | computed | resp tokens | median s "
          "| tokens/s | peak mem GiB | MFU    |")
    print("|----------|----------------------|------------|-------------|----------|-------------|----------"
          "|----------|--------------|--------|")
    for name, sec, mem, flops_per_token in (("step", step_s, step_mem, 6), ("logprobs", lp_s, lp_mem, 2)):
        mfu = f"{flops_per_token * n_params * computed / sec / peak:.1%}" if peak else "n/a"
        mem_s = f"{mem / 2**30:.2f}" if mem is not None else "n/a"
        print(f"| {name:<8} | {gpu[:20]:<20} | {n_params / 1e6:10.1f} | {tokens:11d} | {computed:8d} | {resp_tokens:11d} "
              f"| {sec:8.3f} | {tokens / sec:8.0f} | {mem_s:>12} | {mfu:>6} |")
    if torch.cuda.is_available() and peak is None:
        print(f"\nMFU n/a: {gpu!r} is not in the peak table; pass --peak-tflops (dense bf16).")


if __name__ == "__main__":
    main()
