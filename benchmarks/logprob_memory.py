"""Peak memory and time of the learner's log-prob pass: full logits against the chunked LM head.

    python benchmarks/logprob_memory.py [--batch 8] [--tokens 512] [--chunks 1024,512] [--device cpu]

A random Qwen2 with the Qwen vocabulary (151,936 tokens) and a small body (hidden 256, 2 layers,
tied embeddings: 40M parameters, almost all of them the embedding) scores a micro-batch of
--batch responses of --tokens tokens after a 16-token prompt at temperature 0.7, through
`response_logprobs`, in two passes: forward + backward of the sum of the log-probs (the training
pass), and a no-grad forward (old / reference log-probs). Each variant and pass runs in a fresh
process; memory is the peak over what the process held just before the pass:

- CPU: the kernel's peak resident set (VmHWM, reset through /proc/self/clear_refs right before the
  pass) minus the resident set at that moment;
- CUDA: torch.cuda.max_memory_allocated minus memory_allocated before the pass.

Each child saves its log-probs and gradients; the table gives, per chunk size, the peak against
the full-logits pass and the largest differences (log-probs absolute; gradients relative to each
tensor's largest entry). Time is one pass after a small warm-up: on a shared machine read it as
a rough ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
VOCAB, PROMPT, TEMPERATURE = 151_936, 16, 0.7


def build(device: str):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).to(device)


def micro_batch(batch: int, tokens: int):
    from rlvr.types import LossNorm, MicroBatch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (batch, PROMPT + tokens), generator=g)
    attn = torch.ones_like(ids)
    attn[::2, :4] = 0  # every other prompt left-padded by 4 tokens
    resp_mask = torch.ones(batch, tokens)
    return MicroBatch(ids, attn, ids[:, PROMPT:], resp_mask, torch.zeros(batch), torch.ones(batch), None, None,
                      torch.zeros(batch, tokens), LossNorm(1.0, 1.0, batch), torch.arange(batch))


def resident_bytes() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_resident_bytes() -> int:
    return int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024


def child(args: argparse.Namespace) -> None:
    """One pass in this process; prints a JSON line and saves log-probs and gradients to --out."""
    from rlvr.learner.logprobs import response_logprobs

    model = build(args.device)
    grad = args.mode == "grad"
    # warm-up on a tiny batch: thread pools, kernels, lazy allocations
    with torch.set_grad_enabled(grad):
        lp, _ = response_logprobs(model, micro_batch(1, 4), TEMPERATURE, chunk_tokens=args.chunk)
        if grad:
            lp.sum().backward()
    model.zero_grad(set_to_none=True)
    mb = micro_batch(args.batch, args.tokens)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set to the current one
        before = resident_bytes()
    t0 = time.perf_counter()
    with torch.set_grad_enabled(grad):
        lp, _ = response_logprobs(model, mb, TEMPERATURE, chunk_tokens=args.chunk)
        if grad:
            lp.sum().backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if cuda else peak_resident_bytes()) - before
    grads = {n: p.grad.cpu() for n, p in model.named_parameters()} if grad else {}
    torch.save({"logprobs": lp.detach().cpu(), "grads": grads}, args.out)
    print(json.dumps({"peak_mb": peak / 2**20, "seconds": seconds}))


def run_child(args: argparse.Namespace, chunk: int, mode: str, out: Path) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", "--mode", mode, "--chunk", str(chunk), "--out", str(out),
           "--batch", str(args.batch), "--tokens", str(args.tokens), "--device", args.device]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def differences(full: dict, other: dict) -> tuple[float, float]:
    """(max |log-prob difference|, max over parameters of max |gradient difference| / max |gradient|)."""
    lp = float((other["logprobs"] - full["logprobs"]).abs().max())
    g = max((float((other["grads"][n] - g).abs().max()) / max(float(g.abs().max()), 1e-30)
             for n, g in full["grads"].items()), default=0.0)
    return lp, g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--chunks", default="1024,512,256", help="chunk sizes (learner.logprob_chunk_tokens) to compare")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=["grad", "nograd"], help=argparse.SUPPRESS)
    ap.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    chunks = [0] + [int(c) for c in args.chunks.split(",")]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="rlvr-logprob-mem-") as tmp:
        for mode in ("grad", "nograd"):
            saved = {}
            for chunk in chunks:
                out = Path(tmp) / f"{mode}-{chunk}.pt"
                rows[mode, chunk] = run_child(args, chunk, mode, out)
                saved[chunk] = torch.load(out)
                print(f"  {mode:6s} chunk {chunk:5d}: {rows[mode, chunk]}", file=sys.stderr)
            for chunk in chunks:
                rows[mode, chunk]["lp_diff"], rows[mode, chunk]["grad_diff"] = differences(saved[0], saved[chunk])
            saved.clear()
    full_logits_mb = args.batch * args.tokens * VOCAB * 4 / 2**20
    print(f"\nlog-prob pass, Qwen2 hidden 256 x 2 layers, vocabulary {VOCAB}, B x T = {args.batch} x {args.tokens} "
          f"(+{PROMPT} prompt tokens), temperature {TEMPERATURE}, {args.device}, torch {torch.__version__}; "
          f"one [B, T, V] float32 tensor = {full_logits_mb:.0f} MB\n")
    print("| log-probs from           | fwd+bwd peak MB | vs full | fwd+bwd s | vs full | no-grad peak MB | vs full "
          "| no-grad s | vs full | max abs log-prob diff | max grad diff (rel.) |")
    print("|--------------------------|-----------------|---------|-----------|---------|-----------------|---------"
          "|-----------|---------|-----------------------|----------------------|")
    for chunk in chunks:
        g, n, gf, nf = rows["grad", chunk], rows["nograd", chunk], rows["grad", 0], rows["nograd", 0]
        name = "full logits" if chunk == 0 else f"chunks of {chunk} positions"
        lp_diff = max(g["lp_diff"], n["lp_diff"])
        print(f"| {name:24s} | {g['peak_mb']:15.0f} | {g['peak_mb'] / gf['peak_mb']:7.3f} | {g['seconds']:9.2f} "
              f"| {g['seconds'] / gf['seconds']:7.2f} | {n['peak_mb']:15.0f} | {n['peak_mb'] / nf['peak_mb']:7.3f} "
              f"| {n['seconds']:9.2f} | {n['seconds'] / nf['seconds']:7.2f} | {lp_diff:21.2e} | "
              f"{g['grad_diff']:20.2e} |")


if __name__ == "__main__":
    main()
