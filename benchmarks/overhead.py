"""rlvr's per-step cost against a minimal GRPO loop on the same work, in one run.

Both train the quickstart's tiny model (same architecture, tokenizer, seed) on (a+b) mod 10 with
32 prompts x 8 samples, at most 4 new tokens, lr 3e-4, one update per step, then report the
held-out greedy accuracy on the same 20 unseen problems.

    python benchmarks/overhead.py [--steps 600]

rlvr's step time is wall clock between consecutive metrics.jsonl lines (so it includes logging);
its start-up (model build, data, plug-ins) is reported apart. rlvr runs three times: the minimal
loop's work exactly ("rlvr, same work": every sample in the update, each with its own prompt in
generation and in the update), leaving zero-advantage samples out of the passes
(`learner.skip_zero_advantage`), and as it runs by default, which also runs each group's prompt
once per micro-batch (`learner.share_prompts`) and once per generate() call (`rollout.share_prefill`).
All three give the same gradient.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from minimal_grpo import run as run_minimal  # noqa: E402

from rlvr.config import load_config  # noqa: E402
from rlvr.loop import train  # noqa: E402


def bench_rlvr(out: Path, work: Path, steps: int, overrides: list[str]) -> dict[str, float]:
    cfg = load_config(ROOT / "recipes" / "quickstart.yaml", [
        f"run.steps={steps}", f"run.output_dir={out}", f"model.path={work / 'tiny'}",
        "run.resume=never", "eval.at_start=false", f"eval.every={steps}", "checkpoint.at_end=false",
        "metrics.sinks=[jsonl]", "metrics.plot=false", *overrides,
    ])
    t0 = time.time()
    train(cfg, ROOT / "recipes")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    stamps = [r["time"] for r in rows if "learner/loss" in r]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    acc = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r][-1]
    return {"median_step_s": statistics.median(gaps), "mean_step_s": statistics.fmean(gaps),
            "startup_s": stamps[0] - t0, "accuracy": acc}


# rlvr's arms: overrides of the quickstart recipe
RLVR_ARMS = {
    "rlvr, same work": ["learner.skip_zero_advantage=false", "learner.share_prompts=false",
                        "rollout.share_prefill=false"],
    "rlvr, skip only": ["learner.share_prompts=false", "rollout.share_prefill=false"],
    "rlvr (default)": [],
}


def bench_minimal(work: Path, steps: int) -> dict[str, float]:
    from rlvr.models.tiny import ensure_tiny_model

    ensure_tiny_model(work / "tiny", characters="0123456789+=")
    out = run_minimal(str(work / "tiny"), steps, eval_every=steps, task_args={"max_operand": 9, "test_fraction": 0.1}, log=lambda s: None)
    return {"median_step_s": statistics.median(out["step_s"]), "mean_step_s": statistics.fmean(out["step_s"]),
            "startup_s": float("nan"), "accuracy": out["accuracy"][-1]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rlvr-bench-"))
    try:
        minimal = bench_minimal(work, args.steps)
        arms = {name: bench_rlvr(work / f"rlvr-{i}", work, args.steps, overrides)
                for i, (name, overrides) in enumerate(RLVR_ARMS.items())}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.steps} steps, 32 prompts x 8 samples, tiny Qwen2 (0.3M), (a+b) mod 10, CPU\n")
    print(f"| {'loop':<18} | median s/step | mean s/step | start-up s | held-out acc |")
    print(f"|{'-' * 20}|---------------|-------------|------------|--------------|")
    for name, r in {"minimal": minimal, **arms}.items():
        print(f"| {name:<18} | {r['median_step_s']:13.4f} | {r['mean_step_s']:11.4f} | {r['startup_s']:10.1f} "
              f"| {r['accuracy']:12.2f} |")
    for name, r in arms.items():
        print(f"\n{name} / minimal per-step time: {r['median_step_s'] / minimal['median_step_s']:.2f}x (median), "
              f"{r['mean_step_s'] / minimal['mean_step_s']:.2f}x (mean)", end="")
    print()


if __name__ == "__main__":
    main()
