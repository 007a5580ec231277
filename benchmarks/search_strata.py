"""Stratified Advantage Normalisation against GRPO on the search agent, the setting SAN was made for.

Episodes of the search task (recipes/agents/search.yaml, a fictional world from
scripts/make_search_task.py) differ in structure: a reply may answer at once, or after one or two
searches. The `stratified` estimator normalises rewards inside strata of equal search count
(rollout.stratum = count_tool_calls); `grpo` normalises over the whole group.

1. One warm-up: the tiny random model (character vocabulary, 1024 positions) imitates the worked
   episodes of the training questions (search, read, answer) for --warmup-steps, then takes one
   RL step; its exported weights are the common start of every arm.
2. Each estimator trains from that start for --steps RL steps with each seed (same data order,
   same sampling seed per seed, so the arms differ only in the advantages). The default arms:
   grpo, pure SAN (alpha 1) and SAN blended half with the global normalisation (alpha 0.5): pure
   SAN gives no signal for *whether* to search (that is the cross-stratum term it removes), the
   blend keeps part of it. RL runs at lr 3e-5 (the recipe's 3e-4 is for a policy learning from
   scratch; from the warm start it lost a third of the held-out accuracy in 40 steps).

    python benchmarks/search_strata.py [--warmup-steps 1500] [--steps 60] [--seeds 0 1 2]

Columns per run: greedy held-out accuracy at the start and at the end (test questions: entities
seen in training, question never seen), the sampled training reward of the first and the last 10
steps, searches per episode, and the mean cross-stratum bias (stratified runs only: the part of a
GRPO advantage that only says which stratum the sample fell in); then per estimator the mean over seeds with a 95% t-interval.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "agents" / "search.yaml"
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}  # t(0.975, n-1)


def train(folder: Path, overrides: list[str]) -> list[dict]:
    """`rlvr train` the search recipe in a subprocess; its metrics rows."""
    cmd = [sys.executable, "-m", "rlvr", "train", str(RECIPE), f"run.output_dir={folder}", "run.resume=never",
           "metrics.sinks=[jsonl]", "metrics.plot=false", "alarms.zero_reward.action=warn", *overrides]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode:
        raise SystemExit(f"{folder.name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def summary(rows: list[dict]) -> dict[str, float]:
    evals = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]
    reward = [r["reward/total/mean"] for r in rows if "reward/total/mean" in r]
    last = [r for r in rows if "reward/total/mean" in r][-10:]
    mean = lambda key: statistics.fmean(r[key] for r in last if key in r) if any(key in r for r in last) else float("nan")
    return {"start acc": evals[0], "end acc": evals[-1], "reward first10": statistics.fmean(reward[:10]),
            "reward last10": statistics.fmean(reward[-10:]), "searches": mean("env/tool_calls_mean"),
            "strata bias": mean("advantage/cross_stratum_bias")}


def interval(values: list[float]) -> str:
    m = statistics.fmean(values)
    if len(values) < 2:
        return f"{m:.3f}"
    half = T95[len(values) - 1] * statistics.stdev(values) / len(values) ** 0.5
    return f"{m:.3f} [{m - half:.3f}, {m + half:.3f}]"


def advantage(estimator: str) -> str:
    """The `advantage=` override for "name[,key=value...]": "stratified,alpha=0.5" ->
    "{name: stratified, alpha: 0.5}"."""
    name, *settings = estimator.split(",")
    return "{" + ", ".join([f"name: {name}", *(s.replace("=", ": ", 1) for s in settings)]) + "}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warmup-steps", type=int, default=1500)
    p.add_argument("--steps", type=int, default=60, help="RL steps per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--estimators", nargs="+", default=["grpo", "stratified", "stratified,alpha=0.5"],
                   help="advantage estimators, each a name with optional settings: stratified,alpha=0.5")
    p.add_argument("--people", type=int, default=300, help="people in the fictional world (questions grow with it)")
    p.add_argument("--out", default="runs/bench-search")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override, every run")
    args = p.parse_args()
    out = Path(args.out).resolve()
    data = out / "data"
    subprocess.run([sys.executable, "scripts/make_search_task.py", "--out", str(data), "--people", str(args.people)],
                   cwd=ROOT, check=True)
    common = [f"data.train.path={data / 'train.jsonl'}", f"data.eval.path={data / 'test.jsonl'}",
              f"env.collection={data / 'docs.jsonl'}", "env.k=1", "data.system_prompt=null",
              "rollout.max_new_tokens=112", "rollout.max_turns=3", "sampling.prompts_per_step=8",
              "eval.max_prompts=256", "checkpoint.every=0", "learner.lr=3e-5", *args.set]
    t0 = time.perf_counter()
    warm = out / "warmup"
    rows = train(warm, [*common, f"model.path={out / 'tiny-search'}", "model.build_tiny.max_position_embeddings=1024",
                        f"warmup.steps={args.warmup_steps}", "warmup.column=demonstration", "warmup.batch_size=32",
                        "warmup.lr=1e-3", "run.steps=1", "eval.every=1"])
    start = warm / "checkpoints" / "step_0000001" / "model"
    first = lambda key: next((r[key] for r in rows if key in r), float("nan"))
    print(f"warm-up: {args.warmup_steps} steps in {time.perf_counter() - t0:.0f} s; held-out accuracy "
          f"{first('eval/accuracy'):.3f} after it; final loss {first('warmup/loss'):.4f}", flush=True)
    cols = ["start acc", "end acc", "reward first10", "reward last10", "searches", "strata bias"]
    print(f"{'estimator':22} {'seed':>4} " + " ".join(f"{c:>14}" for c in cols) + f" {'wall s':>7}", flush=True)
    results: dict[str, list[dict[str, float]]] = {}
    for seed in args.seeds:  # seed by seed, so a cut-short run still compares the estimators on equal seeds
        for estimator in args.estimators:
            t = time.perf_counter()
            rows = train(out / f"{estimator.replace(',', '-').replace('=', '')}-{seed}",
                         [*common, f"model.path={start}", "warmup.steps=0", f"advantage={advantage(estimator)}",
                          f"run.seed={seed}", f"run.steps={args.steps}", f"eval.every={args.steps}"])
            r = summary(rows)
            results.setdefault(estimator, []).append(r)
            print(f"{estimator:22} {seed:>4} " + " ".join(f"{r[c]:>14.3f}" for c in cols)
                  + f" {time.perf_counter() - t:>7.0f}", flush=True)
    print(f"\nmean over seeds {args.seeds}, 95% t-interval")
    for estimator, rs in results.items():
        print(f"{estimator:22} end acc {interval([r['end acc'] for r in rs])}   reward last10 "
              f"{interval([r['reward last10'] for r in rs])}")


if __name__ == "__main__":
    main()
