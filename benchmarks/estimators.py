"""Every method recipe on the same CPU task, side by side.

    python benchmarks/estimators.py [--steps 400] [--target 0.7] [--methods grpo,rloo,...]

Each recipe in recipes/ (all `base: quickstart.yaml`: tiny random Qwen2, (a+b) mod 10, 10 held-out
pairs) trains for the same number of steps with the same seed. Printed per method: held-out greedy
accuracy at the end, the first evaluated step reaching --target, the mean fraction of degenerate
(zero-variance) groups, generated samples, and wall time. One seed: read differences of a few
points as noise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from rlvr.config import load_config
from rlvr.loop import train

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"grpo": "quickstart", "dr_grpo": "dr_grpo", "rloo": "rloo", "bnpo": "bnpo", "stratified": "stratified",
           "delta_l": "delta_l", "dapo": "dapo", "spo": "spo", "vas": "vas", "vade": "vade", "gvm": "gvm"}


def run(method: str, steps: int, work: Path) -> dict[str, float]:
    recipe = ROOT / "recipes" / f"{RECIPES[method]}.yaml"
    cfg = load_config(recipe, [f"run.steps={steps}", f"run.output_dir={work / method}", "run.resume=never",
                               f"model.path={work / 'tiny'}", "eval.every=25", "checkpoint.at_end=false",
                               "metrics.sinks=[jsonl]", "metrics.plot=false"])
    t0 = time.time()
    train(cfg, recipe.parent)
    wall = time.time() - t0
    rows = [json.loads(line) for line in (work / method / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    zero = [r["advantage/zero_std_frac"] for r in rows if r.get("advantage/zero_std_frac") is not None]
    samples = sum(r.get("rollout/samples", 0) for r in rows)
    return {"final": evals[-1][1], "evals": evals, "zero_std": sum(zero) / len(zero) if zero else float("nan"),
            "samples": samples, "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--target", type=float, default=0.7)
    ap.add_argument("--methods", default=",".join(RECIPES))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rlvr-estimators-"))
    results = {}
    try:
        for m in args.methods.split(","):
            results[m] = run(m, args.steps, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.steps} steps, quickstart task, seed 0, CPU; eval every 25 steps on 10 held-out pairs\n")
    print(f"| method     | final acc | steps to {args.target:.2f} | degenerate groups | samples trained | wall s |")
    print("|------------|-----------|---------------|-------------------|-----------------|--------|")
    for m, r in results.items():
        hit = next((s for s, a in r["evals"] if a >= args.target), None)
        print(f"| {m:<10} | {r['final']:9.2f} | {hit if hit is not None else '-':>13} | {r['zero_std']:17.2f} "
              f"| {int(r['samples']):15d} | {r['wall']:6.1f} |")


if __name__ == "__main__":
    main()
