"""`env: {name: search, collection: docs.jsonl}`: a retrieval tool over a local document collection.

The tool `search(query, k)` returns the k best documents for the query by BM25 (the `rank_bm25`
library; `pip install -e .[agents]`), each as "[id] text". The collection is a JSON-lines file of
{"id", "text"} rows: yours, or the fictional one `make_world` writes (with `scripts/make_search_task.py`)
together with questions that need one search (who founded X?) or two (when was the founder of X
born?). A reply without a call is the answer. The number of searches an episode made is the
stratum key the `stratified` estimator was designed for (`rollout.stratum:
rlvr.advantage.stratified:count_tool_calls`).

    <tool_call>
    {"name": "search", "arguments": {"query": "who founded Kestrel Works"}}
    </tool_call>                  -> "[org-3] Kestrel Works was founded by Alma Verne in Tessaly."
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from rlvr.data.errors import DataError
from rlvr.data.sources import iter_jsonl
from rlvr.env.base import ToolEnvironment
from rlvr.env.tool_calls import format_tool_call
from rlvr.registry import ENV

_WORD = re.compile(r"\w+")
# words that say nothing about which document answers (a question's "who", "was", "the")
_STOPWORDS = frozenset("a an and are as at be by for from has he her his in is it its of on or she that the their "
                       "to was were what when where which who whom why with did does do how".split())


def words(text: str) -> list[str]:
    """Lower-case word tokens without stop words. Example: "Who founded Kestrel Works?" -> ["founded", "kestrel", "works"]."""
    return [w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]


class BM25Index:
    """BM25 (Okapi, the `rank_bm25` library) over a list of documents ({"id", "text"});
    `search(query, k)` -> the k best, best first, only documents that share a word with the query."""

    def __init__(self, docs: list[dict[str, str]]):
        from rank_bm25 import BM25Okapi

        if not docs:
            raise ValueError("the search collection is empty")
        self.docs = docs
        self.index = BM25Okapi([words(d["text"]) or [""] for d in docs])

    def search(self, query: str, k: int = 3) -> list[dict[str, str]]:
        """The k documents that score highest for `query` (fewer when fewer match at all)."""
        q = words(query)
        if not q:
            return []
        scores = self.index.get_scores(q)
        terms = set(q)
        best = sorted(range(len(self.docs)), key=lambda i: -scores[i])[: max(1, k)]
        return [self.docs[i] for i in best if terms & set(words(self.docs[i]["text"]))]


def read_collection(path: str | Path) -> list[dict[str, str]]:
    """The {"id", "text"} rows of a JSON-lines file; a bad line is named by its number (DataError)."""
    docs = []
    for n, row in iter_jsonl(Path(path), str(path)):
        if not isinstance(row.get("text"), str):
            raise DataError(f'{path} line {n}: a document needs a "text" string (and an "id")')
        docs.append({"id": str(row.get("id", n)), "text": row["text"]})
    return docs


@ENV.register("search")
class Search(ToolEnvironment):
    """The search tool over `collection` (a JSON-lines file, relative to the recipe or absolute)."""

    def __init__(self, collection: str, k: Annotated[int, Field(ge=1, le=20)] = 3,
                 tool_timeout_s: Annotated[float, Field(gt=0)] = 10.0,
                 max_calls_per_turn: Annotated[int, Field(ge=1)] = 2, tool_process: bool = False):
        super().__init__(tool_timeout_s, max_calls_per_turn, tool_process)
        self.k = k
        self.index = BM25Index(read_collection(collection))
        self.tools = {"search": self.search}

    def search(self, query: str, k: int | None = None) -> str:
        """The best documents for `query`, one "[id] text" per line."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError('"query" must be a non-empty string')
        hits = self.index.search(query, int(k) if k is not None else self.k)
        return "\n".join(f"[{d['id']}] {d['text']}" for d in hits) or "no document matches"


# ---- a fictional world with one- and two-hop questions (no hub, no real-world knowledge) ----------

_FIRST = ["Alma", "Boris", "Cleo", "Dario", "Elke", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Lev",
          "Mina", "Nils", "Olga", "Pavel", "Quin", "Rosa", "Sven", "Tara", "Ugo", "Vera", "Wim", "Xena"]
_LAST = ["Verne", "Oakes", "Marr", "Tillo", "Brandt", "Quist", "Halloran", "Ferro", "Lindqvist", "Abara",
         "Castell", "Dunmore", "Esk", "Fairweather", "Gorsky", "Hale"]
_CITIES = ["Tessaly", "Brimwater", "Caldor", "Dunmere", "Eskeby", "Farrow", "Glenhaven", "Harrowgate", "Ilmarsk",
           "Jorvale", "Kestrin", "Lowmoor"]
_ORGS = ["Kestrel Works", "Blue Finch Press", "Ironleaf Mills", "Harbor Lantern Co", "Quillstone Labs",
         "Red Alder Foundry", "Silvergate Bank", "Tidewell Shipping", "Umber Oak Guild", "Vantage Glassworks",
         "Willow Crane Studio", "Yellowmarsh Dairy"]


def make_world(num_people: int = 40, seed: int = 0) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """(documents, questions) of a fictional world: people with a birth city and year, organisations
    with a founder. Questions: "Who founded <org>?" (1 hop: the org's document names the founder),
    "In which city was <person> born?" (1 hop), "In what year was the founder of <org> born?"
    (2 hops: the founder, then the founder's birth year). Each question row has "prompt",
    "answer", "hops" and "demonstration": the model turns of a worked episode (one search per hop,
    then the answer), which `warmup` imitates.

    Example document: {"id": "person-3", "text": "Cleo Marr was born in Caldor in 1871."}
    """
    rng = random.Random(seed)
    names = rng.sample([f"{f} {last}" for f in _FIRST for last in _LAST], num_people)
    people = [{"name": n, "city": rng.choice(_CITIES), "year": rng.randint(1820, 1960)} for n in names]
    orgs = [{"name": o, "founder": rng.choice(people), "city": rng.choice(_CITIES)} for o in _ORGS]
    docs = [{"id": f"person-{i}", "text": f"{p['name']} was born in {p['city']} in {p['year']}."}
            for i, p in enumerate(people)]
    docs += [{"id": f"org-{i}", "text": f"{o['name']} was founded by {o['founder']['name']} in {o['city']}."}
             for i, o in enumerate(orgs)]
    def row(prompt: str, answer: str, *queries: str) -> dict[str, Any]:
        # a worked episode for `warmup`: the searches an agent needs, then the answer alone
        turns = [format_tool_call("search", {"query": q}) for q in queries] + [answer]
        return {"prompt": prompt, "answer": answer, "hops": len(queries), "demonstration": turns}

    questions: list[dict[str, Any]] = []
    for o in orgs:
        founder = o["founder"]["name"]
        questions.append(row(f"Who founded {o['name']}?", founder, f"{o['name']} founded"))
        questions.append(row(f"In what year was the founder of {o['name']} born?", str(o["founder"]["year"]),
                             f"{o['name']} founded", f"{founder} born"))
    for p in people:
        questions.append(row(f"In which city was {p['name']} born?", p["city"], f"{p['name']} born"))
    rng.shuffle(questions)
    return docs, questions
