"""rlvr against TRL's GRPOTrainer on the same GRPO work, on CPU, in one run.

Both sides get the same model folder, prompts (token for token), G samples per prompt, max new
tokens, sampling temperature, learning rate (constant, AdamW, no weight decay), gradient clipping,
reward and loss: GRPO advantages (r - mean) / (std + 1e-4) per group, PPO-clip with the ratio
exactly 1 (one update per generation), no KL (TRL beta=0), and the loss averaged over all
completion tokens of the step (rlvr `token_mean` = TRL `loss_type="dapo"`; with one process and no
gradient accumulation TRL's "bnpo" would give the same number). TRL generates with transformers
`generate` (no vLLM); rlvr runs with its `hf` engine and, when `vllm` imports, its `vllm` engine
(as users get it: weight push and sync probe every step, and the rollout correction that engine
turns on by default, which TRL without vLLM has no counterpart for).

    python benchmarks/vs_trl.py                                  # tiny task, then SmolLM2 if converted
    python benchmarks/vs_trl.py --which tiny --steps 30 --engines hf,vllm

Setups: `tiny` is recipes/quickstart.yaml (random 0.3M Qwen2 built like the quickstart builds it,
(a+b) mod 10, exact-match reward); `smollm2` is recipes/smollm2-wordproblems.yaml (needs
models/smollm2-135m-instruct from `make smollm2`; word problems, final-number reward).

Timing, the same way for both: wall clock of each training step (generation, reward, advantages,
forward/backward, optimiser step, weight sync), logging excluded: rlvr's `perf/step_s`; for TRL,
from a callback's on_step_begin to on_step_end. The first --warmup steps are dropped and the median
is reported. gen_tokens/s is generated tokens (EOS included) over the time spent generating:
rlvr's `perf/rollout_s`, TRL's `_generate` (both: generate and decode, no reward). Each side runs in
its own process, one after the other.
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
RECIPES = ROOT / "recipes"
SETUPS = {  # vllm: extra overrides for rlvr's vllm engine on CPU (its default KV cache is half the host memory)
    "tiny": {"recipe": RECIPES / "quickstart.yaml", "steps": 30, "warmup": 3, "vllm": ["rollout.vllm.kv_cache_gb=0.5"]},
    "smollm2": {"recipe": RECIPES / "smollm2-wordproblems.yaml", "steps": 5, "warmup": 1,
                "vllm": ["rollout.vllm.kv_cache_gb=1"]},
}
# the same normaliser epsilon as TRL's advantage (rlvr's default is 1e-6)
COMMON = ["advantage.epsilon=1e-4"]


def load_setup(name: str, model_path: Path | None = None, extra: list[str] = ()):
    from rlvr.config import load_config

    overrides = [*COMMON, *extra] + ([f"model.path={model_path}"] if model_path else [])
    cfg = load_config(SETUPS[name]["recipe"], overrides)
    problems = []
    if cfg.loss.kl.coef:
        problems.append("KL in the loss")
    if cfg.advantage.name != "grpo" or cfg.loss.policy.name != "ppo_clip" or cfg.loss.aggregation.name != "token_mean":
        problems.append("a method other than grpo + ppo_clip + token_mean")
    if cfg.learner.mini_batches_per_step != 1 or cfg.learner.epochs_per_step != 1:
        problems.append("more than one update per step")
    if cfg.learner.schedule != "constant" or cfg.learner.warmup_steps or cfg.rollout.stop or len(cfg.reward.functions) != 1:
        problems.append("an LR schedule, stop strings or several rewards")
    if problems:
        raise SystemExit(f"{name}: the TRL mapping here does not cover {', '.join(problems)}")
    return cfg


def model_path(name: str, work: Path) -> Path | None:
    """The setup's model folder: the tiny model is built in `work` exactly as the recipe builds it;
    a converted model is looked up in models/. None when it is missing."""
    from rlvr.run import build

    cfg = load_setup(name)
    if cfg.model.build_tiny is not None:
        return Path(build.model_dir(load_setup(name, work / Path(cfg.model.path).name), RECIPES))
    path = Path(cfg.model.path)
    path = path if path.is_absolute() else ROOT / path
    return path if (path / "config.json").exists() else None


# ---- one side, in a child process ---------------------------------------------------------------

def run_rlvr(name: str, model: Path, engine: str, steps: int, work: Path) -> dict:
    import torch

    from rlvr.loop import train

    out = work / f"rlvr-{engine}"
    extra = SETUPS[name]["vllm"] if engine == "vllm" and not torch.cuda.is_available() else []
    cfg = load_setup(name, model, [
        f"rollout.engine={engine}", f"run.steps={steps}", f"run.output_dir={out}", "run.resume=never",
        "eval.at_start=false", "eval.every=0", "checkpoint.every=0", "checkpoint.at_end=false",
        "metrics.sinks=[jsonl]", "metrics.plot=false", *extra,
    ])
    train(cfg, RECIPES)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "perf/step_s" in r]
    return {"step_s": [r["perf/step_s"] for r in rows], "gen_s": [r["perf/rollout_s"] for r in rows],
            "sync_s": [r.get("perf/sync_s", 0.0) for r in rows],
            "tokens": [r["rollout/len_mean"] * r["rollout/samples"] for r in rows],
            "reward": [r["reward/total/mean"] for r in rows]}


def trl_dataset(cfg, tok) -> list[dict]:
    """rlvr's training prompts in TRL's format; checks that both sides see the same token ids."""
    from rlvr.run import build

    prompts, _ = build.load_prompt_set(cfg, cfg.data.train, tok, RECIPES)
    d = cfg.data
    chat = d.chat_template and tok.chat_template is not None
    rows = []
    for p in prompts:
        text = d.prompt_template.format(**p.row) if d.prompt_template else p.row[d.prompt_field]
        if chat:
            text = ([{"role": "system", "content": d.system_prompt}] if d.system_prompt else []) + [
                {"role": "user", "content": text}]
        rows.append({"prompt": text, "answer": p.answer})
    for p, row in zip(prompts[:16], rows):  # TRL's own tokenisation of the same rows
        ids = (tok.apply_chat_template(conversation=[row["prompt"]], add_generation_prompt=True, tokenize=True,
                                       return_dict=True)["input_ids"][0] if chat else tok(text=row["prompt"])["input_ids"])
        if list(ids) != list(p.token_ids):
            raise SystemExit(f"prompt token ids differ between rlvr and TRL for {p.uid}: {p.token_ids} vs {ids}")
    return rows


def run_trl(name: str, model: Path, steps: int, work: Path) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlvr.registry import REWARD
    from rlvr.run import build

    cfg = load_setup(name, model)
    tok = build.load_tokenizer(model)
    data = Dataset.from_list(trl_dataset(cfg, tok))
    spec = cfg.reward.functions[0]
    score = REWARD.get(spec.name)
    rec = {"step_s": [], "gen_s": [], "tokens": [], "reward": []}

    def reward(prompts, completions, completion_ids, answer, **_):
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        r = [spec.weight * score(p, c, {"answer": a}, **spec.kwargs) for p, c, a in zip(prompts, texts, answer)]
        rec["tokens"].append(float(sum(len(ids) for ids in completion_ids)))
        rec["reward"].append(sum(r) / len(r))
        return r

    reward.__name__ = spec.name

    class Timed(GRPOTrainer):
        def _generate(self, *args, **kwargs):  # tokenise, generate, decode: what rlvr's rollout_s covers
            t = time.perf_counter()
            out = super()._generate(*args, **kwargs)
            rec["gen_s"].append(time.perf_counter() - t)
            return out

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            rec["step_s"].append(time.perf_counter() - self.t0)

    sc, ro, lc, policy = cfg.sampling, cfg.rollout, cfg.learner, cfg.loss.policy.kwargs
    args = GRPOConfig(
        output_dir=str(work / "trl"), max_steps=steps, seed=cfg.run.seed, report_to="none", save_strategy="no",
        eval_strategy="no", bf16=False, gradient_checkpointing=cfg.model.gradient_checkpointing,
        per_device_train_batch_size=sc.prompts_per_step * sc.samples_per_prompt, gradient_accumulation_steps=1,
        num_generations=sc.samples_per_prompt, max_completion_length=ro.max_new_tokens,
        temperature=ro.temperature, top_p=ro.top_p, top_k=ro.top_k,
        learning_rate=lc.lr, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
        weight_decay=lc.weight_decay, adam_beta1=lc.betas[0], adam_beta2=lc.betas[1],
        max_grad_norm=lc.max_grad_norm or 0.0, beta=0.0, num_iterations=1, loss_type="dapo", scale_rewards="group",
        epsilon=policy.get("clip_low", 0.2), epsilon_high=policy.get("clip_high", 0.2),
    )
    trainer = Timed(model=build.load_model(model, cfg), reward_funcs=[reward], args=args, train_dataset=data,
                    processing_class=tok, callbacks=[StepTimer()])
    trainer.train()
    return rec


# ---- the parent: one child per side, then the table --------------------------------------------

def child(args) -> None:
    work, model = Path(args.work), Path(args.model)
    side = args.child
    rec = run_trl(args.setup, model, args.steps, work) if side == "trl" else run_rlvr(
        args.setup, model, side.removeprefix("rlvr-"), args.steps, work)
    Path(args.out).write_text(json.dumps(rec))


def vllm_engine_available() -> str | None:
    """None when rlvr can run its vllm engine here, else why not."""
    from rlvr.config.schema import RolloutConfig

    if "vllm" not in str(RolloutConfig.model_fields["engine"].annotation):
        return "this rlvr has no vllm engine yet"
    try:
        import vllm  # noqa: F401
    except Exception as e:  # any import failure means: skip it
        return f"vllm does not import ({type(e).__name__}: {e})"
    return None


def summarise(rec: dict, warmup: int) -> dict:
    keep = slice(warmup, None)
    step, gen, tokens = rec["step_s"][keep], rec["gen_s"][keep], rec["tokens"][keep]
    rates = [t / g for t, g in zip(tokens, gen) if g > 0]
    return {"step_s": statistics.median(step), "tok_s": statistics.median(rates), "steps": len(step),
            "gen_s": statistics.median(gen), "sync_s": statistics.median(rec.get("sync_s", [0.0])[keep] or [0.0]),
            "reward": statistics.fmean(rec["reward"][keep])}


def bench(name: str, sides: list[str], steps: int, warmup: int) -> None:
    results = {}
    with tempfile.TemporaryDirectory(prefix="rlvr-vs-trl-") as tmp:
        model = model_path(name, Path(tmp))
        if model is None:
            print(f"\n[{name}] skipped: no converted model at {load_setup(name).model.path} (run `make smollm2` first)")
            return
        cfg = load_setup(name, model)
        sc = cfg.sampling
        print(f"\n[{name}] {model.name}: {sc.prompts_per_step} prompts x {sc.samples_per_prompt} samples, at most "
              f"{cfg.rollout.max_new_tokens} new tokens, temperature {cfg.rollout.temperature}, lr {cfg.learner.lr}, "
              f"{steps} steps ({warmup} warm-up dropped), load {os.getloadavg()[0]:.2f}", flush=True)
        for side in sides:
            out = Path(tmp) / f"{side}.json"
            cmd = [sys.executable, __file__, "--child", side, "--setup", name, "--steps", str(steps),
                   "--model", str(model), "--work", tmp, "--out", str(out)]
            t = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode:
                print(f"  {side}: failed (exit {proc.returncode}); last output:\n{proc.stdout[-1500:]}{proc.stderr[-3000:]}")
                continue
            results[side] = summarise(json.loads(out.read_text()), warmup)
            print(f"  {side}: done in {time.perf_counter() - t:.0f} s", flush=True)
    if not results:
        return
    base = results.get("trl")
    print(f"\n| {'setup':<18} | step_s  | gen_tokens/s | step_s vs TRL | gen_tokens/s vs TRL | mean reward |")
    print(f"|{'-' * 20}|---------|--------------|---------------|---------------------|-------------|")
    for side, r in results.items():
        ratio_t = f"{r['step_s'] / base['step_s']:.2f}x" if base else "-"
        ratio_g = f"{r['tok_s'] / base['tok_s']:.2f}x" if base else "-"
        print(f"| {name + ' ' + side:<18} | {r['step_s']:7.3f} | {r['tok_s']:12.0f} | {ratio_t:>13} | {ratio_g:>19} "
              f"| {r['reward']:11.3f} |")
    print("  median s/step generating: " + ", ".join(f"{k} {r['gen_s']:.3f}" for k, r in results.items())
          + "; rlvr weight push + sync probe: " + ", ".join(f"{k} {r['sync_s']:.3f}" for k, r in results.items()
                                                             if k != "trl"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=None, help="steps per side (default: tiny 30, smollm2 5)")
    ap.add_argument("--warmup", type=int, default=None, help="first steps left out of timing (default: tiny 3, smollm2 1)")
    ap.add_argument("--which", choices=["tiny", "smollm2", "all"], default="all")
    ap.add_argument("--engines", default="hf,vllm", help="rlvr rollout engines, comma-separated")
    for hidden in ("--child", "--setup", "--model", "--work", "--out"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    sides = ["trl"]
    for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
        why = vllm_engine_available() if engine == "vllm" else None
        if why:
            print(f"rlvr vllm engine skipped: {why}")
        else:
            sides.append(f"rlvr-{engine}")
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    for name in (["tiny", "smollm2"] if args.which == "all" else [args.which]):
        steps = args.steps or SETUPS[name]["steps"]
        warmup = SETUPS[name]["warmup"] if args.warmup is None else args.warmup
        if steps <= warmup:
            raise SystemExit(f"--steps ({steps}) must exceed the warm-up ({warmup})")
        bench(name, sides, steps, warmup)
    print("\nstep_s: median wall seconds per training step (generation + reward + update), logging excluded; "
          "gen_tokens/s: generated tokens (EOS included) per second of generation. "
          "Ratios are this row over TRL's (step_s below 1 and gen_tokens/s above 1 favour the row).")


if __name__ == "__main__":
    main()
