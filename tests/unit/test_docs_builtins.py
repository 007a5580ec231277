"""The tables of built-in plug-ins in README.md and docs/ name exactly what the registries hold.

Each table row of a seam lists its built-ins in backticks; notes in parentheses, e.g.
"`uniform` (key `shuffle: true`)", are not names. README's rewards are one sentence.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rlvr.registry import ADVANTAGE, AGGREGATION, ALLOCATOR, ENV, POLICY_LOSS, REWARD, SAMPLER, Registry

ROOT = Path(__file__).resolve().parents[2]

# how each document labels a seam's row (first cell, or the YAML key cell in docs/algorithms.md)
ROWS: dict[str, dict[str, Registry]] = {
    "README.md": {"advantage": ADVANTAGE, "aggregation": AGGREGATION, "policy loss": POLICY_LOSS,
                  "prompt sampler": SAMPLER, "sample allocator": ALLOCATOR},
    "docs/algorithms.md": {"`sampling.sampler`": SAMPLER, "`sampling.allocator`": ALLOCATOR,
                           "`advantage`": ADVANTAGE, "`loss.policy`": POLICY_LOSS,
                           "`loss.aggregation`": AGGREGATION},
    "docs/architecture.md": {"sampler": SAMPLER, "allocator": ALLOCATOR, "reward": REWARD, "advantage": ADVANTAGE,
                             "policy_loss": POLICY_LOSS, "aggregation": AGGREGATION, "env": ENV},
}


def names_in(text: str) -> set[str]:
    """Backticked names outside parentheses: "`a` (note `x`), `b`" -> {"a", "b"}."""
    return set(re.findall(r"`([\w.:/+-]+)`", re.sub(r"\([^()]*\)", "", text)))


def table_builtins(doc: str, labels: dict[str, Registry]) -> dict[str, set[str]]:
    """{seam: names in the last cell} of the rows of `doc` whose first or second cell is a label."""
    found: dict[str, set[str]] = {}
    for line in (ROOT / doc).read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        label = next((c for c in cells[:2] if c in labels), None)
        if label is not None:
            seam = labels[label].seam
            assert seam not in found, f"{doc}: two rows for {seam}"
            found[seam] = names_in(cells[-1])
    return found


@pytest.mark.parametrize("doc", sorted(ROWS))
def test_the_tables_of_builtins_match_the_registries(doc):
    labels = ROWS[doc]
    found = table_builtins(doc, labels)
    assert found == {reg.seam: set(reg.names()) for reg in labels.values()}


def test_the_readme_names_every_builtin_reward():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    sentence = re.search(r"Built-in rewards:(.*?)\.\s", text, re.S)
    assert sentence is not None, "README.md: the 'Built-in rewards:' sentence is gone"
    assert names_in(sentence.group(1)) == set(REWARD.names())


def test_names_in_skips_notes():
    assert names_in("`uniform` (key `shuffle: true`), `vas`, `fixed` (G = `sampling.samples_per_prompt`)") == {
        "uniform", "vas", "fixed"}
