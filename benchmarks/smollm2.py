"""SmolLM2-135M-Instruct on arithmetic word problems: rlvr's recipe against the minimal GRPO loop.

Both arms train the same model on the same rows with the same prompts (the recipe's system prompt,
template and chat template), the same G, prompts per step, temperature, token budget, learning
rate, gradient clip and reward (rlvr's gsm8k final-number rule), for the same budget of training
wall time, counted from the start of the first step (set-up and model loading excluded; checkpoint
writes included). The recipe's own settings are read from its YAML, so the minimal loop follows
any override given to rlvr, except the learner's precision: the loop updates in float32, as a
100-line loop does, while the vLLM recipe's update runs under bf16 autocast. Weights are saved at
each mark; afterwards one evaluator (greedy `generate`, the same prompts) scores the base model and
every saved model on the same held-out rows.

    make smollm2                                                   # once: models/smollm2-135m-instruct
    python benchmarks/smollm2.py                                   # 30 minutes per arm, 300 held-out
    python benchmarks/smollm2.py --minutes 5 --marks 5 --heldout 64 --set learner.lr=2e-5
    python benchmarks/smollm2.py --stages "learner.logprob_chunk_tokens=0" "rollout.engine=hf"   # step times

rlvr runs as `rlvr train` in its own process (vLLM engine by default, as in
recipes/vllm/smollm2-wordproblems.yaml); when the budget is spent the benchmark sends SIGUSR1, the
stop a Slurm job gets before its time limit, and rlvr checkpoints at the end of that step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "scripts")]
from minimal_grpo import completions, decode, update  # noqa: E402
from prepare_smollm2 import greedy_generate  # noqa: E402

from rlvr.config import load_config  # noqa: E402
from rlvr.reward.builtins import gsm8k_number  # noqa: E402


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def rlvr_arm(recipe: str, overrides: list[str], out: Path, budget_s: float, marks_s: list[float], log) -> list[dict]:
    """Train with `rlvr train`; returns [{minutes, step, model_dir}] of the checkpoints it wrote."""
    run_dir = out / "rlvr"
    every = marks_s[0] / 60 if marks_s else 0
    cmd = [sys.executable, "-m", "rlvr", "train", recipe, f"run.output_dir={run_dir}", "run.steps=100000",
           "run.resume=never", "eval.every=0", "eval.at_start=false", "checkpoint.every=0", f"checkpoint.every_minutes={every}",
           "checkpoint.keep_last=100", "metrics.plot=false", *overrides]
    log("rlvr: " + " ".join(cmd[2:]))
    metrics = run_dir / "metrics.jsonl"
    ends: dict[int, float] = {}  # step -> training seconds when its metrics line appeared
    with open(out / "rlvr.log", "w") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        t0, seen, stopped = None, 0, False
        while proc.poll() is None:
            time.sleep(0.5)
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            for line in lines[seen:]:
                rec = json.loads(line)
                if "perf/step_s" not in rec:  # not a training step's line
                    continue
                if t0 is None:  # the first step started this long before its line was written
                    t0 = time.time() - rec["perf/step_s"]
                ends[rec["step"]] = time.time() - t0
                if rec["step"] % 5 == 0:
                    log(f"rlvr step {rec['step']}: {ends[rec['step']] / 60:.1f} min, reward "
                        f"{rec['reward/total/mean']:.3f}, step {rec['perf/step_s']:.1f}s")
            seen = len(lines)
            if t0 is not None and not stopped and time.time() - t0 >= budget_s:
                proc.send_signal(signal.SIGUSR1)  # stop after this step, with a checkpoint
                stopped = True
    if proc.returncode != (128 + signal.SIGUSR1 if stopped else 0):  # a SIGUSR1 stop exits with 138
        raise SystemExit(f"rlvr train failed (exit {proc.returncode}); see {out / 'rlvr.log'}")
    saved = sorted((int(p.name.split("_")[-1]), p / "model") for p in (run_dir / "checkpoints").glob("step_*"))
    rewards = [r["reward/total/mean"] for r in map(json.loads, metrics.read_text().splitlines()) if "perf/step_s" in r]
    return [{"arm": "rlvr", "step": s, "minutes": ends.get(s, float("nan")) / 60, "model": str(m),
             "reward_last10": statistics.fmean(rewards[max(0, s - 10):s])} for s, m in saved]


def minimal_arm(model_dir: str, cfg, train: list[dict], out: Path, budget_s: float, marks_s: list[float],
                log) -> list[dict]:
    """The minimal loop (benchmarks/minimal_grpo.py's update) on the recipe's data and settings."""
    torch.manual_seed(cfg.run.seed)
    rng = random.Random(cfg.run.seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learner.lr, betas=tuple(cfg.learner.betas),
                            weight_decay=cfg.learner.weight_decay)
    prompts = [render(tok, cfg, row) for row in train]
    n, g, s = cfg.sampling.prompts_per_step, cfg.sampling.samples_per_prompt, cfg.rollout
    saved, rewards, marks, step, t0 = [], [], list(marks_s), 0, time.perf_counter()
    while marks:
        step += 1
        batch = rng.sample(range(len(train)), n)
        model.eval()
        with torch.no_grad():
            ids, attn, new = completions(model, tok, [prompts[i] for i in batch], g, s.max_new_tokens,
                                         temperature=s.temperature)
        texts, mask = decode(tok, new)
        r = torch.tensor([gsm8k_number("", t, train[i]) for i, t in zip([i for i in batch for _ in range(g)], texts)])
        update(model, opt, ids, attn, new, mask, r.view(n, g), cfg.learner.max_grad_norm)
        rewards.append(float(r.mean()))
        elapsed = time.perf_counter() - t0
        if step % 5 == 0:
            log(f"minimal step {step}: {elapsed / 60:.1f} min, reward {rewards[-1]:.3f}")
        if elapsed >= marks[0]:
            marks.pop(0)
            folder = out / "minimal" / f"step-{step}"
            model.save_pretrained(folder)
            tok.save_pretrained(folder)
            saved.append({"arm": "minimal", "step": step, "minutes": (time.perf_counter() - t0) / 60,
                          "model": str(folder), "reward_last10": statistics.fmean(rewards[-10:])})
    return saved


def render(tok, cfg, row: dict) -> list[int]:
    """The prompt ids as rlvr renders a chat prompt: system prompt, then the templated user turn."""
    head = [{"role": "system", "content": cfg.data.system_prompt}] if cfg.data.system_prompt else []
    text = tok.apply_chat_template(head + [{"role": "user", "content": cfg.data.prompt_template.format(**row)}],
                                   tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False).input_ids


def heldout_accuracy(model_dir: str, cfg, rows: list[dict]) -> tuple[float, float, str]:
    """Greedy accuracy on `rows`, the mean reply tokens, and the accuracy by the rows' `op` ("add 0.91
    sub 0.80 mul 0.40"), with the recipe's prompt and token budget."""
    outs, lengths, _ = greedy_generate(model_dir, [cfg.data.prompt_template.format(**r) for r in rows],
                                       max_new_tokens=cfg.rollout.max_new_tokens, batch_size=50,
                                       system_prompt=cfg.data.system_prompt)
    right = [gsm8k_number("", o, r) for o, r in zip(outs, rows)]
    ops = sorted({r.get("op", "") for r in rows} - {""})
    by_op = " ".join(f"{op} {statistics.fmean(x for x, r in zip(right, rows) if r.get('op') == op):.2f}"
                     for op in ops)
    return statistics.fmean(right), statistics.fmean(lengths), by_op


def stage_times(recipe: str, variants: list[str], steps: int, out: Path, log, common: list[str]) -> None:
    """Where one rlvr step's time goes: `steps` steps of the recipe as it is and with each variant
    (space-separated overrides), median seconds per stage over the steps after the first."""
    log("\n| variant | step s | rollout s | learn s | sync s | reward |\n|---|---|---|---|---|---|")
    for i, variant in enumerate(["", *variants]):
        run_dir = out / f"stages-{i}"
        cmd = [sys.executable, "-m", "rlvr", "train", recipe, f"run.output_dir={run_dir}", f"run.steps={steps}",
               "run.resume=never", "eval.every=0", "eval.at_start=false", "checkpoint.every=0",
               "checkpoint.at_end=false", "metrics.plot=false", *common, *variant.split()]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            log(f"| {variant or 'recipe'} | failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1]} |")
            continue
        rows = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "perf/step_s" in r]
        med = {k: statistics.median(r[f"perf/{k}_s"] for r in rows[1:]) for k in ("step", "rollout", "learn", "sync")}
        reward = statistics.fmean(r["reward/total/mean"] for r in rows)
        log(f"| {variant or 'recipe'} | {med['step']:.1f} | {med['rollout']:.1f} | {med['learn']:.1f} "
            f"| {med['sync']:.2f} | {reward:.3f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/vllm/smollm2-wordproblems.yaml")
    ap.add_argument("--minutes", type=float, default=30.0, help="training wall time per arm")
    ap.add_argument("--marks", default="15,30", help="minutes at which weights are saved and later scored")
    ap.add_argument("--heldout", type=int, default=300, help="test rows scored (the first N)")
    ap.add_argument("--arms", default="rlvr,minimal")
    ap.add_argument("--out", default="runs/bench-smollm2")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override, both arms")
    ap.add_argument("--stages", nargs="*", metavar="OVERRIDES",
                    help="instead of the side-by-side: per-stage step times of the recipe and of each variant "
                    "(space-separated overrides in one argument), --stage-steps steps each")
    ap.add_argument("--stage-steps", type=int, default=5)
    ap.add_argument("--skip-base", action="store_true", help="do not score the starting model (known from a run before)")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logfile = open(out / "bench.log", "a")

    def log(line: str) -> None:
        print(line, flush=True)
        logfile.write(line + "\n")
        logfile.flush()

    recipe = ROOT / args.recipe
    cfg = load_config(recipe, args.set)
    model_dir = str(ROOT / cfg.model.path)  # as `rlvr train` run from the repository root reads it
    train = read_rows((recipe.parent / cfg.data.train.path).resolve())
    test = read_rows((recipe.parent / cfg.data.eval.path).resolve())[: args.heldout]
    if args.stages is not None:
        stage_times(str(recipe), args.stages, args.stage_steps, out, log, args.set)
        return 0
    budget = args.minutes * 60
    marks = sorted({float(m) * 60 for m in args.marks.split(",")} | {budget})
    log(f"model {model_dir}; {len(train)} train rows, {len(test)} held-out; budget {args.minutes} min; marks "
        f"{[m / 60 for m in marks]}; {cfg.sampling.prompts_per_step} prompts x {cfg.sampling.samples_per_prompt}, "
        f"T {cfg.rollout.temperature}, lr {cfg.learner.lr}, max_new_tokens {cfg.rollout.max_new_tokens}")
    saved = [{"arm": "both", "step": 0, "minutes": 0.0, "model": model_dir, "reward_last10": float("nan")}]
    for arm in args.arms.split(","):
        if arm == "rlvr":
            saved += rlvr_arm(str(recipe), args.set, out, budget, marks, log)
        elif arm == "minimal":
            saved += minimal_arm(model_dir, cfg, train, out, budget, marks, log)
        else:
            raise SystemExit(f"--arms: unknown arm {arm!r} (rlvr, minimal)")
    log(f"\n| arm | minutes | steps | held-out accuracy (n={len(test)}) | by operation | mean reply tokens "
        "| train reward, last 10 steps |")
    log("|---|---|---|---|---|---|---|")
    for row in saved[1:] if args.skip_base else saved:
        acc, tokens, by_op = heldout_accuracy(row["model"], cfg, test)
        se = math.sqrt(acc * (1 - acc) / len(test))
        log(f"| {row['arm']} | {row['minutes']:.1f} | {row['step']} | {acc:.3f} ± {se:.3f} | {by_op} | {tokens:.1f} | "
            f"{row['reward_last10']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
