"""AdamW's step on a SmolLM2-135M-sized model: torch's three implementations side by side.

    python benchmarks/optimizer.py [--model models/smollm2-135m-instruct] [--steps 5]

The learner's update ends in one AdamW step over every trainable weight (135M float32 numbers for
SmolLM2-135M, 4 reads and 3 writes of each). torch.optim.AdamW has three implementations: a Python
loop over the parameters (`foreach=False`, what AdamW picks on CPU when asked nothing), one
multi-tensor kernel per operation (`foreach=True`) and one fused kernel (`fused=True`). This times
each on the same weights and gradients (random gradients, 1 warm-up step, median of --steps) and
checks that the three give the same weights: the choice is speed only. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}


def time_variant(model_dir: Path, kwargs: dict, steps: int) -> tuple[float, list[torch.Tensor]]:
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_config(config)  # the shapes are what matters, not the values
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(1)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    opt = torch.optim.AdamW(params, lr=5e-6, betas=(0.9, 0.999), weight_decay=0.0, **kwargs)
    opt.step()  # warm-up: allocates the moments
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), [p.detach().clone() for p in params]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    results = {name: time_variant(Path(args.model), kw, args.steps) for name, kw in VARIANTS.items()}
    base_s, base_w = results["for-loop"]
    n = sum(w.numel() for w in base_w)
    print(f"\nAdamW step over {n / 1e6:.1f}M float32 weights ({Path(args.model).name}), "
          f"{torch.get_num_threads()} threads, median of {args.steps}\n")
    print("| implementation | s/step | vs for-loop | max weight difference from for-loop |")
    print("|---|---|---|---|")
    for name, (sec, weights) in results.items():
        diff = max(float((a - b).abs().max()) for a, b in zip(weights, base_w))
        print(f"| {name} | {sec:.3f} | {sec / base_s:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
