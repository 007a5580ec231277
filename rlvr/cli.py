"""`rlvr [--debug] train | eval | config show | config validate | plot | serve`.

Errors reach the user as one or a few lines on stderr, never a traceback unless `--debug`:

    error: <message>                                   an RlvrError (a recipe, data, checkpoint or
                                                       reward problem, a stopped run); exit code
                                                       its `exit_code` (2: the input is wrong)
    error: <Type>: <message>                           anything else (a bug or a library's error);
    (rerun with `rlvr --debug ...` for the traceback)  exit code 1
    error: interrupted                                 Ctrl-C that reached the top; exit code 130
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path

# a foreign exception's message is cut to this many lines (library errors can run to dozens)
_MAX_MESSAGE_LINES = 4


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlvr", description="RL post-training with verifiable rewards")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train from a recipe")
    t.add_argument("recipe")
    t.add_argument("overrides", nargs="*", help="key.sub=value (YAML values)")
    e = sub.add_parser("eval", help="evaluate a model folder on a recipe's eval split")
    e.add_argument("model_dir")
    e.add_argument("recipe")
    e.add_argument("overrides", nargs="*")
    c = sub.add_parser("config", help="inspect a recipe")
    csub = c.add_subparsers(dest="action", required=True)
    for name, text in (("show", "print the fully resolved recipe"),
                       ("validate", "check a recipe, its model and data, before anything heavy")):
        a = csub.add_parser(name, help=text)
        a.add_argument("recipe")
        a.add_argument("overrides", nargs="*")
    pl = sub.add_parser("plot", help="draw reward/accuracy curves of a run folder")
    pl.add_argument("run_dir")
    pl.add_argument("--out", default=None)
    sv = sub.add_parser("serve", help="run one rollout worker (a vLLM server set up for rlvr) in the foreground",
                        description="MODEL is a model folder or hub name, or a recipe (.yaml, followed by its "
                        "key=value overrides): then the model and the rollout.vllm settings are the recipe's, "
                        "and the flags given here replace them.")
    sv.add_argument("model_path", metavar="MODEL")
    sv.add_argument("overrides", nargs="*", help="a recipe's key=value overrides")
    sv.add_argument("--port", type=int, default=8100)
    sv.add_argument("--host", default="0.0.0.0", help="the address to listen on (default: every interface)")
    sv.add_argument("--dtype", default=None, help="default: auto, or the recipe's rollout.vllm.dtype")
    sv.add_argument("--tensor-parallel-size", type=int, default=None)
    sv.add_argument("--kv-cache-gb", type=float, default=None, help="KV cache size (default: vLLM's own sizing)")
    sv.add_argument("--gpu-memory-utilization", type=float, default=None)
    sv.add_argument("--max-model-len", type=int, default=None)
    sv.add_argument("--seed", type=int, default=None)
    sv.add_argument("--enforce-eager", action="store_true", default=None, help="no graph compilation (starts faster)")
    sv.add_argument("--log-dir", default=None, help="write the server's output to a file here (default: terminal)")
    return p


def main(argv: list[str] | None = None) -> int:
    """`rlvr ...`: run one command; returns its exit code (an RlvrError's own code, with one line
    instead of a traceback unless --debug)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if not faulthandler.is_enabled():  # a native crash (an abort in a C++ library) prints every
        faulthandler.enable()  # thread's Python stack first, so its cause is kept with the exit code
    if args.debug:
        return _run(args)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the top of the program: say it in a line, not a traceback
        return _report(e, argv)


def _report(e: Exception, argv: list[str]) -> int:
    """Print `e` for a user and return the exit code (see the module docstring)."""
    from rlvr.errors import RlvrError

    if isinstance(e, RlvrError):
        print(f"error: {e}", file=sys.stderr)
        return int(e.exit_code)
    lines = str(e).strip().splitlines() or [""]
    text = "\n".join(lines[:_MAX_MESSAGE_LINES]) + (" [...]" if len(lines) > _MAX_MESSAGE_LINES else "")
    print(f"error: {type(e).__name__}: {text}".rstrip(), file=sys.stderr)
    print(f"(rerun with `rlvr --debug {shlex.join(argv)}` for the traceback)", file=sys.stderr)
    return 1


def _serve_spec(args: argparse.Namespace):
    """The worker `rlvr serve` starts: from its flags, or from a recipe's model and rollout.vllm
    settings (the ones a worker that `rlvr train` starts gets) with the flags given replacing them."""
    from rlvr.rollout.workers import WorkerSpec

    flags = {"dtype": args.dtype, "tensor_parallel_size": args.tensor_parallel_size, "kv_cache_gb": args.kv_cache_gb,
             "gpu_memory_utilization": args.gpu_memory_utilization, "max_model_len": args.max_model_len,
             "seed": args.seed, "enforce_eager": args.enforce_eager}
    target = Path(args.model_path)
    if target.suffix not in (".yaml", ".yml"):
        if args.overrides:
            raise ValueError(f"rlvr serve: key=value overrides ({args.overrides[0]}) need a recipe, not a model")
        return WorkerSpec(args.model_path, port=args.port, host=args.host,
                          **{k: v for k, v in flags.items() if v is not None})
    from rlvr.config import load_config
    from rlvr.run.build import worker_spec

    cfg = load_config(target, args.overrides)
    spec = worker_spec(cfg, target.parent, port=args.port, host=args.host)
    return replace(spec, **{k: v for k, v in flags.items() if v is not None})


def _notes(cfg, base_dir: Path) -> None:
    """Print what is not an error but changes what happens (once, by the first process)."""
    from rlvr.config.preflight import notes

    if os.environ.get("RANK", "0") != "0":
        return
    for line in notes(cfg, base_dir):
        print(f"note: {line}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    from rlvr.config import load_config, to_yaml

    if args.command == "plot":
        from rlvr.metrics.plot import plot_run

        print(plot_run(args.run_dir, args.out))
        return 0
    if args.command == "serve":
        from rlvr.rollout.workers import serve_foreground

        return serve_foreground(_serve_spec(args), args.log_dir)
    base_dir = Path(args.recipe).parent
    if args.command == "config":
        # show prints what was asked even when the model is not there yet; validate checks it all
        full = args.action == "validate"
        cfg = load_config(args.recipe, args.overrides, check_inputs=full, check_context=full)
        if args.action == "show":
            print(to_yaml(cfg), end="")
        else:
            _notes(cfg, base_dir)
            print(f"{args.recipe}: valid")
        return 0
    if args.command == "train":
        # the model folder and the data are checked here, before anything loads; the prompt length
        # against the model's context right after the tokenizer loads (inside train)
        cfg = load_config(args.recipe, args.overrides, check_inputs=True)
        _notes(cfg, base_dir)
        from rlvr.loop import train

        train(cfg, base_dir)
        return 0
    if args.command == "eval":
        cfg = load_config(args.recipe, args.overrides)
        from rlvr.eval.standalone import eval_model

        print(json.dumps(eval_model(args.model_dir, cfg, base_dir), indent=2))
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
