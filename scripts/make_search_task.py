"""Write the search environment's fictional task: a document collection and one- and two-hop questions.

    python scripts/make_search_task.py                 # -> data/search/{docs,train,test}.jsonl
    python scripts/make_search_task.py --out /tmp/s --people 60 --seed 1

Nothing is downloaded: people, cities and organisations are invented (rlvr.env.search.make_world),
so no model can know the answers without searching. Test questions are a held-out share of the
questions (the documents are shared: a search engine is not split).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rlvr.env.search import make_world


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/search")
    p.add_argument("--people", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.2)
    args = p.parse_args(argv)
    docs, questions = make_world(args.people, args.seed)
    n_test = round(len(questions) * args.test_fraction)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("docs", docs), ("test", questions[:n_test]), ("train", questions[n_test:])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"{out}: {len(docs)} documents, {len(questions) - n_test} train and {n_test} test questions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
