"""The learner's forward + backward with each prompt run once per group (learner.share_prompts) against
once per sample, on SmolLM2-135M-Instruct (run `make smollm2` once), for several prompt and response
lengths and group sizes.

    python benchmarks/shared_prompts.py [--precision bf16|fp32] [--repeats 2]

Each case is one micro-batch of N x G samples: N prompts of P random tokens, G responses of R random
tokens each (the first case is the shape of recipes/vllm/smollm2-wordproblems.yaml's batch), through `response_logprobs` (chunked head, as the learner runs it) and a backward of the
sum of the log-probs, under bf16 autocast or in float32. The table gives the median seconds of
--repeats passes after a warm-up, the ratio, the share of the tokens that are prompt, and the
largest log-prob difference between the two paths.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rlvr.buffer import pack  # noqa: E402
from rlvr.learner.batching import pairs_batch  # noqa: E402
from rlvr.learner.logprobs import response_logprobs  # noqa: E402
from rlvr.types import LossNorm  # noqa: E402

CASES = [(8, 64, 16, 4), (4, 64, 16, 8), (2, 64, 128, 8), (2, 256, 32, 8), (2, 32, 256, 8)]  # (N, P, R, G)


def micro_batch(prompts: int, prompt: int, response: int, g: int):
    gen = torch.Generator().manual_seed(0)
    p_ids, r_ids = [], []
    for _ in range(prompts):
        p = torch.randint(100, 40_000, (prompt,), generator=gen).tolist()
        for _ in range(g):
            p_ids.append(p)
            r_ids.append(torch.randint(100, 40_000, (response,), generator=gen).tolist())
    n = len(p_ids)
    (mb,) = pack(pairs_batch(p_ids, r_ids, pad_id=0), torch.arange(n), LossNorm(1.0, 1.0, response), 10**9, 0)
    return mb


def timed(model, mb, share: bool, precision: str, repeats: int) -> tuple[float, torch.Tensor]:
    times, logp = [], None
    for i in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext():
            logp, _ = response_logprobs(model, mb, 0.6, chunk_tokens=512, share_prompts=share)
        logp.sum().backward()
        if i:  # the first pass warms up
            times.append(time.perf_counter() - start)
    return statistics.median(times), logp.detach()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    args = ap.parse_args()
    if not Path(args.model).exists():
        sys.exit(f"{args.model} is missing: run `make smollm2` first")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.train()
    print(f"SmolLM2-135M-Instruct, {args.precision}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print("\n| prompts N | prompt P | response R | G | prompt share of tokens | per sample s | shared s | ratio "
          "| max abs logp diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, prompt, response, g in CASES:
        mb = micro_batch(n, prompt, response, g)
        full, lp_full = timed(model, mb, False, args.precision, args.repeats)
        shared, lp_shared = timed(model, mb, True, args.precision, args.repeats)
        diff = float((lp_full - lp_shared).abs().max())
        print(f"| {n} | {prompt} | {response} | {g} | {prompt / (prompt + response):.0%} | {full:.2f} | {shared:.2f} "
              f"| {shared / full:.2f}x | {diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
