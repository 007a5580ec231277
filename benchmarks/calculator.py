"""Does a tool make a task learnable? Two-digit sums and products with and without the calculator.

Every set-up trains the same tiny random model (recipes/agents/calculator.yaml: Qwen2, hidden 128,
2 layers, character vocabulary, ChatML) on the same rows of `synthetic:sum` ("07+85=" -> "92",
operands zero-padded to two digits; and `synthetic:product`, "07*85=" -> "595"), with the same
seed, RL budget and held-out set:

    rl only        no warm-up, no tool: RL from random weights (platform.md: reward stays ~0)
    answers        warm-up on the same demonstration budget, each row's bare answer ("92"), then RL
                   without the tool: supervised addition from a few hundred examples, then RL
    calculator     warm-up on the same budget of worked calculator episodes (the JSON tool call,
                   the tool's real reply, the answer), then RL with the calculator

    python benchmarks/calculator.py [--steps 60] [--warmup-steps 600] [--warmup-rows 4000] [--seeds 0]
                                    [--tasks sum product] [--only "rl only" answers calculator]

Columns: greedy held-out accuracy after the warm-up (step 0) and after RL (the last evaluation),
the best evaluation, tool calls and tool errors per episode at the last step, the training
reward of the last 10 steps, and wall seconds (warm-up included). Each set-up runs in its own
process (`rlvr train`), one after the other, so their times compare on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "agents" / "calculator.yaml"
NO_TOOL = ["env=null", "rollout.max_turns=1", "rollout.stop=[]", "rollout.max_new_tokens=8"]
SETUPS = {  # name -> overrides of the recipe
    "rl only": ["warmup.steps=0", *NO_TOOL],
    "answers": ["warmup.column=answer", *NO_TOOL],
    "calculator": [],
}


def last(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return values[-1] if values else float("nan")


def run(name: str, overrides: list[str], out: Path, args: argparse.Namespace, seed: int, task: str
        ) -> dict[str, float]:
    """Train one set-up in a subprocess; its summary from metrics.jsonl."""
    folder = out / f"{task}-{name.replace(' ', '_')}-{seed}"
    cmd = [sys.executable, "-m", "rlvr", "train", str(RECIPE), f"run.output_dir={folder}", f"run.steps={args.steps}",
           f"run.seed={seed}", "run.resume=never", f"warmup.steps={args.warmup_steps}",
           f"warmup.max_rows={args.warmup_rows}", f"eval.every={args.eval_every}", "checkpoint.every=0",
           "checkpoint.at_end=false", "alarms.zero_reward.action=warn", "metrics.sinks=[jsonl]",
           f"model.path={out / 'models' / 'tiny-chat'}",
           f"data.train.path=synthetic:{task}", f"data.eval.path=synthetic:{task}", *overrides]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    train = [r["reward/accuracy"] for r in rows if "reward/accuracy" in r]
    return {"after warm-up": evals[0][1], "after RL": evals[-1][1], "best": max(a for _, a in evals),
            "tool calls": last(rows, "env/tool_calls_mean"), "tool errors": last(rows, "env/tool_errors_mean"),
            "train reward": statistics.fmean(train[-10:]) if train else float("nan"), "wall s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60, help="RL steps")
    p.add_argument("--warmup-steps", type=int, default=600)
    p.add_argument("--warmup-rows", type=int, default=4000, help="the demonstration budget (first N training rows)")
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--only", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    p.add_argument("--tasks", nargs="+", choices=["sum", "product"], default=["sum", "product"])
    args = p.parse_args()
    cols = ["after warm-up", "after RL", "best", "tool calls", "tool errors", "train reward", "wall s"]
    print(f"two-digit sums and products, tiny random model; warm-up {args.warmup_steps} steps on the first {args.warmup_rows} "
          f"rows, then {args.steps} RL steps; held-out greedy accuracy")
    print(f"{'task':8} {'set-up':12} {'seed':>4} " + " ".join(f"{c:>13}" for c in cols), flush=True)
    with tempfile.TemporaryDirectory(prefix="rlvr-calculator-") as tmp:
        for task in args.tasks:
            for seed in args.seeds:
                for name in args.only:
                    r = run(name, SETUPS[name], Path(tmp), args, seed, task)
                    print(f"{task:8} {name:12} {seed:>4} " + " ".join(f"{r[c]:>13.3f}" for c in cols), flush=True)


if __name__ == "__main__":
    main()
