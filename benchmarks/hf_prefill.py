"""The hf engine's generate with each distinct prompt prefilled once (the default) against once per
sample, on SmolLM2-135M-Instruct (run `make smollm2` once).

    python benchmarks/hf_prefill.py [--repeats 3]

Each case is one generate() call of N prompts x G samples: N prompts of P random tokens, at most R new
tokens at temperature 0.6. Both arms draw from the same seed, so they sample the same tokens (the
table says whether they did) and the time difference is the prompt pass alone. The first case is the
shape of recipes/smollm2-wordproblems.yaml's rollout (8 prompts of about 60 tokens x 4, 48 tokens).
Median seconds of --repeats calls after a warm-up; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rlvr.rollout import HFEngine, SamplingParams  # noqa: E402
from rlvr.types import Prompt, PromptBatch  # noqa: E402

CASES = [(8, 60, 48, 4), (4, 60, 48, 8), (2, 256, 32, 8), (8, 16, 48, 4)]  # (N, P, R, G)


def batch(n: int, p: int, g: int) -> PromptBatch:
    gen = torch.Generator().manual_seed(0)
    rows = [Prompt(f"b#{i}", "", torch.randint(100, 40_000, (p,), generator=gen).tolist(), "", {}) for i in range(n)]
    return PromptBatch(rows, [g] * n)


def timed(engine: HFEngine, b: PromptBatch, params: SamplingParams, repeats: int):
    times, out = [], None
    for i in range(repeats + 1):  # the first call warms up
        torch.manual_seed(i)
        t0 = time.perf_counter()
        out = engine.generate(b, params)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    shared, plain = HFEngine(model, tok), HFEngine(model, tok, share_prefill=False)
    print(f"\nhf engine generate, SmolLM2-135M-Instruct fp32, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}\n")
    print("| prompts N | prompt P | max new R | G | mean reply tokens | per sample s | shared s | ratio "
          "| same tokens |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, p, r, g in CASES:
        b, params = batch(n, p, g), SamplingParams(max_new_tokens=r, temperature=0.6)
        t_plain, a = timed(plain, b, params, args.repeats)
        t_shared, s = timed(shared, b, params, args.repeats)
        same = torch.equal(a.response_ids, s.response_ids)
        print(f"| {n} | {p} | {r} | {g} | {float(a.lengths.float().mean()):.1f} | {t_plain:.2f} | {t_shared:.2f} "
              f"| {t_shared / t_plain:.2f}x | {'yes' if same else 'no'} |")


if __name__ == "__main__":
    main()
