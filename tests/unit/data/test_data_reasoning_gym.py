"""reasoning-gym sources: rows fixed by the seed, held-out split disjoint from training by question
text (also where reasoning-gym's own seeds collide), and errors that name the recipe key."""

from __future__ import annotations

import pickle
import sys

import pytest
import yaml

from rlvr.config import ConfigError, load_config
from rlvr.data import DataError, load_rows
from rlvr.data.reasoning_gym import arg_problems, generate, split_of

# two one-digit terms joined by + or -: exactly 200 distinct questions, so draws collide constantly
SMALL = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
BASE = {
    "model": {"path": "m"},
    "data": {"train": {"path": "reasoning-gym:chain_sum", "split": "train", "args": {"size": 20, **SMALL}}},
    "reward": {"functions": [{"name": "reasoning_gym"}]},
    "eval": {"every": 0, "at_start": False},
}


def _questions(rows: list[dict]) -> list[str]:
    return [r["reasoning_gym"]["entry"]["question"] for r in rows]


def test_same_seed_same_rows_and_another_seed_other_rows():
    a = generate("chain_sum", size=50, seed=3)
    assert a == generate("chain_sum", size=50, seed=3)
    assert _questions(a) != _questions(generate("chain_sum", size=50, seed=4))
    assert len(set(_questions(a))) == 50  # no repeats within a split


def test_reasoning_gyms_own_seeds_overlap_but_the_splits_never_do():
    import reasoning_gym

    # the hazard: item i of seed s is Random(s + i), so seeds 0 and 1 are the same stream shifted by one
    s0 = {reasoning_gym.create_dataset("chain_sum", seed=0, size=100)[i]["question"] for i in range(100)}
    s1 = {reasoning_gym.create_dataset("chain_sum", seed=1, size=100)[i]["question"] for i in range(100)}
    assert len(s0 & s1) >= 99
    # on the 200-question config, train takes 140 and test 40 (of the 49 that hash below 0.25)
    train = _questions(generate("chain_sum", split="train", size=140, seed=0, test_fraction=0.25, **SMALL))
    for seed in (0, 1, 2):
        test = _questions(generate("chain_sum", split="test", size=40, seed=seed, test_fraction=0.25, **SMALL))
        assert len(set(test)) == 40 and not set(test) & set(train), seed
        assert all(split_of(q, 0.25) == "test" for q in test)
    assert all(split_of(q, 0.25) == "train" for q in train)


def test_a_split_without_enough_distinct_questions_is_an_error():
    # 49 of the 200 questions are test questions at test_fraction 0.25
    assert len(generate("chain_sum", split="test", size=49, test_fraction=0.25, **SMALL)) == 49
    with pytest.raises(DataError, match=r"only 49 distinct questions fall in the test split .*size=50"):
        generate("chain_sum", split="test", size=50, test_fraction=0.25, **SMALL)


def test_rows_carry_the_item_and_the_config_and_survive_pickling():
    source, rows = load_rows("reasoning-gym:basic_arithmetic", split="test",
                             synthetic_args={"size": 5, "seed": 1, "max_digits": 2})
    assert source == "reasoning-gym:basic_arithmetic:test"
    for row in rows:
        entry = row["reasoning_gym"]["entry"]
        assert row["prompt"] == entry["question"] and row["answer"] == entry["answer"]
        assert row["metadata"] is entry["metadata"] and entry["metadata"]["source_dataset"] == "basic_arithmetic"
        assert row["reasoning_gym"]["task"] == "basic_arithmetic"
        assert row["reasoning_gym"]["config"]["max_digits"] == 2
    assert pickle.loads(pickle.dumps(rows)) == rows


def test_composite_rows_name_their_sub_task_and_its_config():
    specs = [{"name": "chain_sum", "weight": 1, "config": {"max_digits": 1}}, {"name": "gcd", "weight": 1}]
    rows = generate("composite", size=30, seed=0, datasets=specs)
    tasks = {r["reasoning_gym"]["task"] for r in rows}
    assert tasks == {"chain_sum", "gcd"}
    chain = [r for r in rows if r["reasoning_gym"]["task"] == "chain_sum"]
    assert all(r["reasoning_gym"]["config"]["max_digits"] == 1 for r in chain)


def _problems(tmp_path, **changes) -> list[str]:
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    return e.value.problems


def test_unknown_task_names_the_path_key_and_lists_the_tasks(tmp_path):
    (p,) = _problems(tmp_path, data__train__path="reasoning-gym:chain_sun")
    assert p.startswith("data.train.path: reasoning-gym:chain_sun: unknown task (did you mean 'chain_sum'?); known: ")
    assert "basic_arithmetic" in p and "word_sorting" in p


def test_bad_task_config_names_the_args_key(tmp_path):
    got = _problems(tmp_path, data__train__args={"size": 0, "max_term": 3, "min_digits": "two"},
                    data__eval={"path": "reasoning-gym:basic_arithmetic", "split": "dev",
                                "args": {"operators": ["+", "%"]}})
    assert "data.train.args.size: must be at least 1, got 0" in got
    assert any(p.startswith("data.train.args.max_term: not an option of chain_sum (did you mean 'max_terms'?); "
                            "options: size, seed, test_fraction, min_terms, max_terms") for p in got), got
    assert any(p.startswith("data.train.args.min_digits: Input should be a valid integer") for p in got), got
    assert "data.eval.split: split must be one of train, test, got 'dev'" in got
    # reasoning-gym's own validate() fails without naming a field: the key whose default passes is blamed
    assert "data.eval.args.operators: unsupported operator: %" in got
    assert len(got) == 5, got


def test_validate_message_blames_the_field_it_names():
    assert arg_problems("chain_sum", {"min_terms": 4, "max_terms": 3}) == [
        ("args.max_terms", "max_terms must be >= min_terms")]


def test_composite_problems_name_the_entry():
    got = arg_problems("composite", {"datasets": [{"name": "chain_sum", "config": {"max_term": 2}},
                                                  {"name": "gcdd"}]})
    assert [k for k, _ in got] == ["args.datasets[0].config.max_term", "args.datasets[1].name"]
    assert "did you mean 'gcd'?" in got[1][1]


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym.factory", None)  # import now raises ImportError
    ((key, message),) = arg_problems("chain_sum", {})
    assert key == "path" and "pip install 'rlvr[tasks]'" in message
    with pytest.raises(DataError, match=r"reasoning-gym:chain_sum: path: needs the reasoning-gym package"):
        load_rows("reasoning-gym:chain_sum")


def test_a_generator_that_raises_is_a_data_error_naming_the_item(monkeypatch):
    from reasoning_gym.arithmetic.chain_sum import ChainSumDataset

    def broken(self, idx):
        raise KeyError("no such word list")

    monkeypatch.setattr(ChainSumDataset, "__getitem__", broken)
    with pytest.raises(DataError, match=r"reasoning-gym:chain_sum: reasoning-gym failed on item 0 .*KeyError"):
        generate("chain_sum", size=3)


@pytest.mark.parametrize("recipe", ["chain_sum-tiny.yaml", "smollm2-basic-arithmetic.yaml"])
def test_shipped_recipes_read_disjoint_train_and_eval_rows(recipe):
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "recipes" / "reasoning_gym" / recipe
    cfg = load_config(path)
    loaded = [load_rows(ds.path, split=ds.split, synthetic_args=ds.args) for ds in (cfg.data.train, cfg.data.eval)]
    (_, train), (_, test) = loaded
    assert len(train) == cfg.data.train.args["size"] and len(test) == cfg.data.eval.args["size"]
    assert not set(_questions(train)) & set(_questions(test))
