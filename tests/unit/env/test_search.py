"""The search environment: BM25 over a collection, and a fictional task whose 2-hop questions
really need two searches."""

import json

import pytest

pytest.importorskip("rank_bm25", reason="needs rank_bm25 (pip install -e .[agents])")

from rlvr.env import format_tool_call
from rlvr.env.search import BM25Index, Search, make_world, read_collection
from rlvr.registry import ENV

pytestmark = pytest.mark.agents


def test_one_hop_questions_are_answered_by_one_search_and_two_hop_ones_need_two():
    docs, questions = make_world(40, seed=0)
    index = BM25Index(docs)
    assert {q["hops"] for q in questions} == {1, 2} and len(questions) == 2 * 12 + 40
    for q in questions:
        first = index.search(q["prompt"], k=1)[0]["text"]
        if q["hops"] == 1:
            assert q["answer"] in first, (q, first)
            continue
        assert q["answer"] not in first  # the founder's document has no birth year
        founder = first.split(" was founded by ")[1].split(" in ")[0]
        second = index.search(f"{founder} born", k=1)[0]["text"]
        assert second.startswith(founder) and q["answer"] in second, (q, second)


def test_the_tool_answers_with_documents_and_errors_are_shown(tmp_path):
    docs, _ = make_world(10, seed=1)
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    env = ENV.get("search")(collection=str(path), k=2)
    assert isinstance(env, Search)
    reply = env.respond(None, format_tool_call("search", {"query": "who founded Kestrel Works"}))
    lines = reply.messages[0]["content"].splitlines()
    assert len(lines) == 2 and lines[0].startswith("[org-0] Kestrel Works was founded by")
    assert reply.tool_calls == {"search": 1} and not reply.done
    empty = env.respond(None, format_tool_call("search", {"query": " "}))
    assert empty.tool_errors == 1 and '"query" must be a non-empty string' in empty.messages[0]["content"]
    nothing = env.respond(None, format_tool_call("search", {"query": "zebra quantum"}))
    assert nothing.messages[0]["content"] == "no document matches"


def test_a_bad_collection_row_is_named(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"id": "a", "text": "fine"}\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=r'docs.jsonl line 2: a document needs a "text" string'):
        read_collection(path)
    path.write_text('{"id": "a", "text": "fine"}\nnot json\n')
    with pytest.raises(ValueError, match=r"docs.jsonl line 2: invalid JSON"):
        read_collection(path)


def test_each_demonstration_finds_its_answer_with_the_real_tool(tmp_path):
    """The worked episodes `warmup` imitates: one search per hop, each call runs, and the answer
    turn is text the tool really returned (the last search's documents hold it)."""
    docs, questions = make_world(40, seed=0)
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    env = ENV.get("search")(collection=str(path), k=2)
    for q in questions:
        *calls, answer = q["demonstration"]
        assert answer == q["answer"] and len(calls) == q["hops"]
        seen = []
        for call in calls:
            reply = env.respond(None, call)
            assert reply.tool_calls == {"search": 1} and reply.tool_errors == 0, (q, call)
            seen.append(reply.messages[0]["content"])
        assert answer in seen[-1], (q, seen)
        if q["hops"] == 2:  # the first search names the founder, whose name the second query uses
            founder = seen[0].split(" was founded by ")[1].split(" in ")[0]
            assert founder in calls[1] and answer not in seen[0]
