"""Synchronous against asynchronous training on the same work, in one run.

Trains the quickstart (tiny Qwen2, (a+b) mod 10, 32 prompts x 8 samples) with the same seed in
four set-ups and prints one table:

    colocated      the synchronous loop: generate, score, train, push, in turn
    k=0            disaggregated, max_staleness 0: the rollout worker generates step t only once
                   step t - 1 is trained (the same samples as colocated; the pipeline's cost alone)
    k=1, k=2       disaggregated, generation of the next k steps overlaps training (old_policy auto:
                   the ratio is taken against the behaviour policy's recorded log-probs)

    python benchmarks/async.py [--steps 300] [--engine hf|vllm] [--workers 1]

Columns: median and mean seconds per step (wall clock between consecutive metrics lines), the
samples trained per second over the run, the fraction of the learner's time spent waiting for
rollouts, the fraction of the rollout side's time spent idle, the held-out greedy accuracy at the
last evaluation and the first step it reached 0.7 (evaluated every 25 steps).

Idle fractions. Colocated, the learner waits while its process generates and the generator waits
while it trains: learner idle = (rollout + reward time) / step time, generator idle = the rest.
Disaggregated, learner idle = perf/learner_wait_s / step time and the producer reports its own
busy and idle time (perf/producer_idle_frac). With the hf engine the worker is a copy of the model
on the producer's thread of the same process: on CPU the two roles share the cores, so compare the
idle fractions, not the step times, as the measure of overlap (a speed-up needs the workers on
their own devices: `--engine vllm` starts vLLM servers, which on one small CPU still compete for
its cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlvr.config import load_config  # noqa: E402
from rlvr.loop import train  # noqa: E402

SETUPS = {  # name -> overrides
    "colocated": ["rollout.mode=colocated"],
    "k=0": ["rollout.mode=disaggregated", "rollout.max_staleness=0"],
    "k=1": ["rollout.mode=disaggregated", "rollout.max_staleness=1"],
    "k=2": ["rollout.mode=disaggregated", "rollout.max_staleness=2"],
}


def summarise(rows: list[dict], disaggregated: bool) -> dict[str, float]:
    """The table's numbers from a run's metrics.jsonl rows."""
    steps = [r for r in rows if "learner/loss" in r]
    stamps = [r["time"] for r in steps]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    span = stamps[-1] - stamps[0]
    samples = sum(r.get("rollout/samples", 0.0) for r in steps[1:])
    step_s = sum(r["perf/step_s"] for r in steps)
    if disaggregated:
        learner_idle = sum(r["perf/learner_wait_s"] for r in steps) / step_s
        producer_idle = statistics.fmean(r["perf/producer_idle_frac"] for r in steps[1:])
    else:
        learner_idle = sum(r["perf/rollout_s"] + r.get("perf/reward_s", 0.0) for r in steps) / step_s
        producer_idle = 1.0 - learner_idle
    evals = [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    first = next((s for s, a in evals if a >= 0.7), None)
    return {"median_s": statistics.median(gaps), "mean_s": statistics.fmean(gaps),
            "samples_per_s": samples / span,
            "learner_idle": learner_idle, "producer_idle": producer_idle,
            "staleness": max(r.get("rollout/staleness_max", 0.0) for r in steps),
            "accuracy": evals[-1][1], "to_0.7": first}


def run_one(work: Path, name: str, overrides: list[str], args: argparse.Namespace) -> dict[str, float]:
    out = work / name.replace("=", "")
    engine = [f"rollout.engine={args.engine}"]
    if args.engine == "vllm":
        engine += ["rollout.vllm.kv_cache_gb=0.25", "rollout.vllm.max_model_len=64",
                   f"rollout.workers.num={args.workers}", f"rollout.workers.port={args.port}"]
    cfg = load_config(ROOT / "recipes" / "quickstart.yaml", [
        f"run.steps={args.steps}", f"run.output_dir={out}", f"model.path={work / 'tiny-digits'}",
        "run.resume=never", "eval.at_start=false", "eval.every=25", "checkpoint.every=0",
        "checkpoint.at_end=false", "metrics.sinks=[jsonl]", "metrics.plot=false", *engine, *overrides,
    ])
    t0 = time.perf_counter()
    train(cfg, ROOT / "recipes")
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {**summarise(rows, "disaggregated" in overrides[0]), "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    ap.add_argument("--workers", type=int, default=1, help="vllm: rollout workers started per disaggregated run")
    ap.add_argument("--port", type=int, default=8150, help="vllm: the first worker's port")
    ap.add_argument("--only", nargs="*", choices=list(SETUPS), help="run only these set-ups")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rlvr-async-bench-"))
    results = {}
    try:
        for name, overrides in SETUPS.items():
            if not args.only or name in args.only:
                results[name] = run_one(work, name, overrides, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results.get("colocated")
    print(f"\n{args.steps} steps of the quickstart (32 prompts x 8 samples, tiny Qwen2, (a+b) mod 10), engine "
          f"{args.engine}{f' x {args.workers} worker(s)' if args.engine == 'vllm' else ''}\n")
    print("| set-up    | median s/step | mean s/step | samples/s | vs colocated | learner idle | rollout idle "
          "| max staleness | held-out acc | step to 0.7 | wall s |")
    print("|-----------|---------------|-------------|-----------|--------------|--------------|--------------"
          "|---------------|--------------|-------------|--------|")
    for name, r in results.items():
        ratio = f"{r['samples_per_s'] / base['samples_per_s']:.2f}x" if base else "-"
        print(f"| {name:<9} | {r['median_s']:13.4f} | {r['mean_s']:11.4f} | {r['samples_per_s']:9.0f} "
              f"| {ratio:>12} | {r['learner_idle']:12.2f} | {r['producer_idle']:12.2f} | {r['staleness']:13.0f} "
              f"| {r['accuracy']:12.2f} | {r['to_0.7'] if r['to_0.7'] is not None else '-':>11} "
              f"| {r['wall_s']:6.1f} |")


if __name__ == "__main__":
    main()
