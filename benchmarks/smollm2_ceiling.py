"""What a model can already do on the word problems, before any RL: the ceiling RL starts from.

For each operation of `data/word_problems/test.jsonl`, with the recipe's own prompts (system prompt,
template, chat template) and token budget, scored by rlvr's gsm8k final-number rule:

- greedy accuracy (what the held-out evaluation measures);
- the mean accuracy of samples at the recipe's temperature (what training rewards see);
- pass@k: the share of problems that at least one of k samples answers right. RL mostly moves
  probability onto answers the model already samples, so pass@k at small k bounds what a short run
  can reach; problems no sample gets right give GRPO no signal at all;
- how often the bare product is right ("What is a * b?"), the arithmetic the multiplication
  problems need, apart from reading the story.

    python benchmarks/smollm2_ceiling.py [--model models/smollm2-135m-instruct] [--k 8] [--limit 300]

Uses vLLM on CPU (sampling 300 x 8 replies takes about 6 minutes on 2 cores); point --model at a
checkpoint's model/ folder to see what training changed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/smollm2-135m-instruct")
    ap.add_argument("--recipe", default="recipes/vllm/smollm2-wordproblems.yaml")
    ap.add_argument("--k", type=int, default=8, help="samples per problem for pass@k")
    ap.add_argument("--limit", type=int, default=300, help="test rows (the first N)")
    args = ap.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process: no spawn of this script
    from transformers import AutoTokenizer
    from vllm import LLM
    from vllm import SamplingParams as VLLMParams

    from rlvr.config import load_config
    from rlvr.reward.builtins import gsm8k_number

    cfg = load_config(ROOT / args.recipe, [])
    rows = [json.loads(line) for line in (ROOT / "data/word_problems/test.jsonl").read_text().splitlines()][: args.limit]
    tok = AutoTokenizer.from_pretrained(args.model)

    def chat(user: str, system: str | None) -> str:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    prompts = [chat(cfg.data.prompt_template.format(**r), cfg.data.system_prompt) for r in rows]
    llm = LLM(model=args.model, dtype="float32", seed=0, max_model_len=1024, enforce_eager=True)
    budget = cfg.rollout.max_new_tokens
    greedy = llm.generate(prompts, VLLMParams(temperature=0, max_tokens=budget), use_tqdm=False)
    sampled = llm.generate(prompts, VLLMParams(temperature=cfg.rollout.temperature, max_tokens=budget, n=args.k),
                           use_tqdm=False)
    muls = [r for r in rows if r["op"] == "mul"]
    bare = llm.generate([chat(f"What is {r['a']} * {r['b']}?", None) for r in muls],
                        VLLMParams(temperature=0, max_tokens=24), use_tqdm=False)

    by_op: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for r, g, s in zip(rows, greedy, sampled):
        right = [gsm8k_number("", o.text, r) for o in s.outputs]
        by_op[r["op"]].append((gsm8k_number("", g.outputs[0].text, r), statistics.fmean(right), float(any(right))))
    by_op["all"] = [x for op in sorted(by_op) for x in by_op[op]]
    print(f"\n{args.model}, {len(rows)} test problems, T {cfg.rollout.temperature}, at most {budget} new tokens\n")
    print(f"| op | n | greedy | sampled mean | pass@{args.k} |\n|---|---|---|---|---|")
    for op, xs in by_op.items():
        g, m, p = (statistics.fmean(x[i] for x in xs) for i in range(3))
        print(f"| {op} | {len(xs)} | {g:.3f} | {m:.3f} | {p:.3f} |")
    if muls:
        right = statistics.fmean(gsm8k_number("", o.outputs[0].text, r) for r, o in zip(muls, bare))
        print(f"\nbare products of the multiplication problems' operands, greedy: {right:.3f} (n={len(muls)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
