"""A minimal GRPO loop (about 100 lines): the yardstick for rlvr's per-step overhead.

Same work as recipes/quickstart.yaml: sample G completions per prompt with `generate`, reward 1
for an exact answer, group-normalise, one token-mean policy-gradient step (ratio 1, so no
clipping), AdamW, gradient clipping. No configs, checkpoints, metrics, or plug-ins.

    python benchmarks/minimal_grpo.py --steps 600      # prints step time and held-out accuracy
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr.data.synthetic import generate as synth
from rlvr.models.tiny import ensure_tiny_model


def left_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
    return ids, (torch.arange(width) >= torch.tensor([width - len(s) for s in seqs])[:, None]).long()


def completions(model, tok, prompts: list[list[int]], n: int, max_new: int, greedy: bool = False,
                temperature: float = 1.0):
    ids, attn = left_pad([p for p in prompts for _ in range(n)], tok.pad_token_id)
    out = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new, do_sample=not greedy,
                         temperature=None if greedy else temperature, top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
    return ids, attn, out[:, ids.shape[1]:]


def decode(tok, new: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """Texts up to the first EOS, and the response mask [N, T] (EOS included)."""
    eos = new == tok.eos_token_id
    has = eos.any(1)
    last = torch.where(has, eos.float().argmax(1), torch.full((len(new),), new.shape[1] - 1))
    mask = (torch.arange(new.shape[1]) <= last[:, None]).float()
    texts = [tok.decode(row[: int(n) + (0 if h else 1)], skip_special_tokens=True) for row, n, h in zip(new, last, has)]
    return texts, mask


def update(model, opt, ids, attn, new, mask, r: torch.Tensor, max_grad_norm: float = 1.0) -> None:
    """One GRPO step: group-normalised rewards r [prompts, G], token-mean policy gradient, AdamW."""
    adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)).flatten()
    model.train()
    full = torch.cat([ids, new], 1)
    full_attn = torch.cat([attn, mask.long()], 1)
    logits = model(input_ids=full, attention_mask=full_attn,
                   position_ids=(full_attn.cumsum(1) - 1).clamp(min=0)).logits[:, ids.shape[1] - 1 : -1]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
    loss = -(adv[:, None] * logp * mask).sum() / mask.sum()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()


def accuracy(model, tok, prompts, answers, max_new: int) -> float:
    with torch.no_grad():
        _, _, new = completions(model, tok, prompts, 1, max_new, greedy=True)
    texts, _ = decode(tok, new)
    return sum(t.strip() == a for t, a in zip(texts, answers)) / len(answers)


def run(model_dir: str, steps: int, prompts_per_step: int = 32, g: int = 8, max_new: int = 4, lr: float = 3e-4,
        eval_every: int = 50, seed: int = 0, task_args: dict | None = None, log=print) -> dict[str, list[float]]:
    torch.manual_seed(seed)
    random.seed(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    task_args = dict(task_args or {})
    task = task_args.pop("task", "mod_sum")
    train = synth(task, split="train", num_rows=8000, seed=0, **task_args)
    test = synth(task, split="test", num_rows=10 if task_args.get("test_fraction") else 200, seed=1, **task_args)
    enc = lambda rows: [tok(r["prompt"]).input_ids for r in rows]
    train_ids, test_ids = enc(train), enc(test)
    times, accs = [], []
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        batch = random.sample(range(len(train)), prompts_per_step)
        model.eval()
        with torch.no_grad():
            ids, attn, new = completions(model, tok, [train_ids[i] for i in batch], g, max_new)
        texts, mask = decode(tok, new)
        gold = [train[i]["answer"] for i in batch for _ in range(g)]
        r = torch.tensor([float(t.strip() == a) for t, a in zip(texts, gold)]).view(-1, g)
        update(model, opt, ids, attn, new, mask, r)
        times.append(time.perf_counter() - t0)
        if eval_every and step % eval_every == 0:
            accs.append(accuracy(model, tok, test_ids, [t["answer"] for t in test], max_new))
            log(f"minimal step {step}: reward {r.mean():.3f} held-out accuracy {accs[-1]:.3f} "
                f"step {statistics.median(times[-eval_every:]):.3f}s")
    return {"step_s": times, "accuracy": accs}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/tiny-digits")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--pad-width", type=int, default=2)
    ap.add_argument("--max-operand", type=int, default=99)
    args = ap.parse_args()
    ensure_tiny_model(args.model, characters="0123456789+=")
    run(args.model, args.steps, task_args={"pad_width": args.pad_width, "max_operand": args.max_operand})
