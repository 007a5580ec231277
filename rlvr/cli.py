"""`rlvr train | eval | config show | config validate | plot`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlvr", description="RL post-training with verifiable rewards")
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
    for name, text in (("show", "print the fully resolved recipe"), ("validate", "check a recipe")):
        a = csub.add_parser(name, help=text)
        a.add_argument("recipe")
        a.add_argument("overrides", nargs="*")
    pl = sub.add_parser("plot", help="draw reward/accuracy curves of a run folder")
    pl.add_argument("run_dir")
    pl.add_argument("--out", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from rlvr.config import ConfigError, load_config, to_yaml

    if args.command == "plot":
        from rlvr.metrics.plot import plot_run

        print(plot_run(args.run_dir, args.out))
        return 0
    try:
        cfg = load_config(args.recipe, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    base_dir = Path(args.recipe).parent
    if args.command == "config":
        if args.action == "show":
            print(to_yaml(cfg), end="")
        else:
            print(f"{args.recipe}: valid")
        return 0
    if args.command == "train":
        from rlvr.loop import train

        train(cfg, base_dir)
        return 0
    if args.command == "eval":
        from rlvr.standalone_eval import eval_model

        print(json.dumps(eval_model(args.model_dir, cfg, base_dir), indent=2))
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
