"""`rlvr eval MODEL_DIR RECIPE`: the recipe's evaluation on any saved model folder."""

from __future__ import annotations

from pathlib import Path

from rlvr.config import Config
from rlvr.eval.evaluate import evaluate
from rlvr.rollout import HFEngine
from rlvr.run import build


def eval_model(model_dir: str | Path, cfg: Config, base_dir: Path | None = None) -> dict[str, float]:
    """Greedy accuracy (and pass@k when eval.samples > 0) of `model_dir` on data.eval (as episodes
    of the recipe's environment when it has one)."""
    if cfg.data.eval is None:
        raise ValueError("data.eval: the recipe names no evaluation set")
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = build.load_tokenizer(model_dir)
    model = build.load_model(model_dir, cfg, trainable=False).to(device)
    env = build.make_env(cfg, base_dir)
    prompts, _ = build.load_prompt_set(cfg, cfg.data.eval, tokenizer, base_dir, env)
    rewards = build.make_reward_runner(cfg, base_dir)
    r = cfg.rollout
    engine = HFEngine(model, tokenizer, batch_prompts=r.batch_prompts, share_prefill=r.share_prefill)
    # with an env, each evaluation sample is an episode, as in training
    episodes = None if env is None else lambda batch, params: build.play_episodes(
        cfg, engine, env, tokenizer, batch, params)[0]
    try:
        e = cfg.eval
        return evaluate(engine, prompts[: e.max_prompts], rewards,
                        max_new_tokens=e.max_new_tokens or r.max_new_tokens, stop=tuple(r.stop),
                        samples=e.samples, ks=e.ks, temperature=e.temperature, generate=episodes)
    finally:
        rewards.close()
