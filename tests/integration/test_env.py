"""`rlvr train` with an environment: episodes through the whole loop, a user's environment from a
file, its state across a resume."""

import json
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, run_recipe

pytestmark = [pytest.mark.agents, pytest.mark.slow]

RECIPE = ROOT / "recipes" / "agents" / "calculator.yaml"
SMALL = ["warmup.steps=0", "sampling.prompts_per_step=4", "sampling.samples_per_prompt=4", "rollout.max_new_tokens=12",
         "eval.max_prompts=4", "metrics.sinks=[jsonl]", "metrics.plot=false"]

COUNTING_ENV = '''
from rlvr.env import Reply


class TwoTurns:
    """Answers the first turn with "go on", ends the episode after the second; counts episodes
    across the run (state a checkpoint must keep)."""

    def __init__(self):
        self.started = 0

    def start(self, row):
        self.started += 1
        return {"turn": 0, "question": row["prompt"]}

    def respond(self, state, turn):
        state["turn"] += 1
        if state["turn"] == 2:
            return Reply.end("enough")
        return Reply([{"role": "user", "content": "go on"}])

    def state_dict(self):
        return {"started": self.started}

    def load_state_dict(self, state):
        self.started = state["started"]
'''


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_user_environment_runs_through_the_loop_and_keeps_its_state_across_a_resume(tmp_path, models_dir):
    env_file = tmp_path / "my_env.py"
    env_file.write_text(COUNTING_ENV)
    args = [*SMALL, f"env={{name: '{env_file}:TwoTurns'}}", "eval.every=2", "checkpoint.every=2", "run.resume=auto",
            "rollout.max_episode_tokens=100"]
    run_dir = run_recipe(RECIPE, tmp_path / "run", models_dir, "run.steps=2", *args)
    train = [r for r in rows(run_dir) if "env/turns_mean" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert all(r["env/turns_mean"] == 2.0 and r["env/end/enough"] == 1.0 for r in train), train
    # the model's tokens only: two turns of at most 12 tokens each, the inserted ones not counted
    assert all(r["rollout/len_max"] <= 24 for r in train)
    assert [r["step"] for r in rows(run_dir) if "eval/accuracy" in r] == [0, 2]  # evaluation plays episodes too
    import torch

    state = torch.load(run_dir / "checkpoints" / "step_0000002" / "state.pt", weights_only=True)
    # 2 steps x 16 episodes, plus 4 evaluation episodes at steps 0 and 2
    assert state["plugins"]["env"] == {"started": 2 * 16 + 2 * 4}
    resumed = run_recipe(RECIPE, tmp_path / "run", models_dir, "run.steps=3", *args)
    state = torch.load(resumed / "checkpoints" / "step_0000003" / "state.pt", weights_only=True)
    # continued from 40, not from 0: step 3's 16 episodes (its checkpoint comes before the final evaluation)
    assert state["plugins"]["env"] == {"started": 2 * 16 + 2 * 4 + 16}


def test_the_calculator_recipe_runs_episodes(tmp_path, models_dir):
    run_dir = run_recipe(RECIPE, tmp_path / "calc", models_dir, "run.steps=2", "eval.every=0", "eval.at_start=false",
                         *SMALL)
    train = [r for r in rows(run_dir) if "env/turns_mean" in r]
    assert len(train) == 2
    for r in train:
        ends = sum(v for k, v in r.items() if k.startswith("env/end/"))
        assert ends == pytest.approx(1.0) and 1.0 <= r["env/turns_mean"] <= 3.0
        assert r["perf/env_generate_s"] > 0 and "env/tool_calls_mean" in r


def test_episodes_run_on_the_rollout_workers_too(tmp_path, models_dir):
    """rollout.mode: disaggregated: the producer plays the episodes, k = 1 ahead of the learner."""
    run_dir = run_recipe(RECIPE, tmp_path / "async", models_dir, "run.steps=3", "eval.every=0", "eval.at_start=false",
                         "rollout.mode=disaggregated", "rollout.max_staleness=1", *SMALL)
    train = [r for r in rows(run_dir) if "env/turns_mean" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all(r["rollout/staleness_max"] <= 1 and r["advantage/at_production"] == 1.0 for r in train)


def test_the_search_recipe_runs_with_strata_from_the_episodes(tmp_path, models_dir):
    pytest.importorskip("rank_bm25", reason="needs rank_bm25 (pip install -e .[agents])")
    from scripts.make_search_task import main as make_task

    data = tmp_path / "search"
    assert make_task(["--out", str(data), "--people", "12"]) == 0
    run_dir = run_recipe(ROOT / "recipes" / "agents" / "search.yaml", tmp_path / "run", models_dir, "run.steps=2",
                         "eval.every=0", "eval.at_start=false", f"data.train.path={data / 'train.jsonl'}",
                         f"data.eval.path={data / 'test.jsonl'}", f"env.collection={data / 'docs.jsonl'}", *SMALL)
    train = [r for r in rows(run_dir) if "env/turns_mean" in r]
    assert len(train) == 2 and all("advantage/num_strata" in r for r in train)


VERIFIERS_ENV = '''
import verifiers as vf
from datasets import Dataset


class GoOn(vf.MultiTurnEnv):
    async def env_response(self, messages, state, **kwargs):
        return [{"role": "user", "content": "go on"}]


def turns(completion, **kwargs) -> float:
    return float(sum((m.get("role") if isinstance(m, dict) else m.role) == "assistant" for m in completion))


def load_environment(max_turns: int = 2, scale: float = 0.5):
    return GoOn(dataset=Dataset.from_list([{"question": "q", "answer": "a"}]), max_turns=max_turns,
                rubric=vf.Rubric(funcs=[turns], weights=[scale]))
'''


@pytest.mark.parametrize("mode", ["colocated", "disaggregated"])  # disaggregated: a producer thread plays them
def test_a_verifiers_environment_trains_with_its_rubric_as_the_reward(tmp_path, models_dir, mode):
    from rlvr.env.verifiers_env import VerifiersError, import_verifiers

    try:
        import_verifiers()
    except VerifiersError as e:
        pytest.skip(str(e))
    env_file = tmp_path / "vf_env.py"
    env_file.write_text(VERIFIERS_ENV)
    args = [*SMALL, f"env={{name: verifiers, environment: '{env_file}:load_environment', args: {{max_turns: 2}}}}",
            "reward.functions=[{name: env}]", "rollout.max_episode_tokens=100", "eval.every=0", f"rollout.mode={mode}"]
    run_dir = run_recipe(RECIPE, tmp_path / "run", models_dir, "run.steps=2", *args)
    train = [r for r in rows(run_dir) if "env/turns_mean" in r]
    assert [r["step"] for r in train] == [1, 2]
    for r in train:  # verifiers ends each episode after its 2 turns; the rubric pays 0.5 a turn
        # (before 0.1.12 an empty reply is an error that ends the episode: has_error, and the empty turn
        # is not in verifiers' trajectory)
        assert r["env/end/max_turns_reached"] + r.get("env/end/has_error", 0.0) == pytest.approx(1.0), r
        assert r["env/end/max_turns_reached"] >= 0.5 and r["env/turns_mean"] <= 2.0, r
        assert r["reward/env/mean"] == pytest.approx(0.5 * r["reward/env/turns"]), r
        if "env/end/has_error" not in r:
            assert r["env/turns_mean"] == 2.0 and r["reward/env/turns"] == pytest.approx(2.0), r


def test_a_warm_up_teaches_the_tool_call_and_a_resume_does_not_repeat_it(tmp_path, models_dir, capsys):
    """Imitation of four calculator demonstrations: afterwards the policy writes the JSON call that
    the tiny random model never writes, the tool runs, and the episodes reach a second turn."""
    common = ["sampling.prompts_per_step=4", "sampling.samples_per_prompt=2", "rollout.max_new_tokens=96",
              "rollout.temperature=0.3", "eval.every=0", "eval.at_start=false", "metrics.sinks=[jsonl,console]",
              "metrics.plot=false", "warmup.steps=100", "warmup.max_rows=4", "warmup.batch_size=4", "warmup.lr=3e-3",
              "data.train.args.num_rows=4", "checkpoint.every=1"]
    out = tmp_path / "warm"
    run_recipe(RECIPE, out, models_dir, "run.steps=1", *common)
    first = rows(out)
    warm = [r for r in first if "warmup/loss" in r]
    assert len(warm) == 1 and warm[0]["step"] == 0 and warm[0]["warmup/rows"] == 4
    assert warm[0]["warmup/loss"] < warm[0]["warmup/loss_first"] / 20
    (step1,) = [r for r in first if "env/turns_mean" in r]
    # the rows trained on are the rows sampled here: the calls parse and the calculator answers them
    assert step1["env/tool_calls/calculator"] >= 0.5 and step1["env/turns_mean"] > 1.5
    said = capsys.readouterr()
    assert "warm-up step 100/100" in said.out + said.err
    run_recipe(RECIPE, out, models_dir, "run.steps=2", *common)
    again = rows(out)
    assert [r["step"] for r in again if "warmup/loss" in r] == [0]  # the first run's record only
    assert [r["step"] for r in again if "env/turns_mean" in r] == [1, 2]
    said = capsys.readouterr()
    assert "warm-up" not in said.out + said.err and "resuming at step 1" in said.out + said.err
