"""The verifiers adapter: a verifiers MultiTurnEnv and ToolEnv (tests/unit/env/vf_envs.py) played
by rlvr's episode runner with a scripted engine; turns, inserted messages, masks, rubric rewards."""

import sys
import threading
from pathlib import Path

import pytest
from test_episodes import ScriptedEngine, prompt
from transformers import AutoTokenizer

from rlvr.env import format_tool_call, run_episodes
from rlvr.env.template import TurnTemplate
from rlvr.env.verifiers_env import Verifiers, VerifiersError, assistant_turn, import_verifiers
from rlvr.registry import ENV, REWARD
from rlvr.reward import RewardRunner, RewardSpec, score_rollouts
from rlvr.rollout import SamplingParams
from rlvr.types import PromptBatch

try:
    import_verifiers()
    MISSING = ""
except VerifiersError as e:
    MISSING = str(e)

pytestmark = pytest.mark.agents
needs_verifiers = pytest.mark.skipif(bool(MISSING), reason=f"verifiers with the classic API: {MISSING}")

ENVS = Path(__file__).parent / "vf_envs.py"


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def play(tok, env, script, *, question="Guess my number (1-10).", answer="7", max_turns=5, max_tokens=400):
    """The scripted episodes (one per uid of `script`) of `env`, all on the same dataset row."""
    engine = ScriptedEngine(tok, script)
    batch = PromptBatch([prompt(tok, uid, question) for uid in script], [1] * len(script))
    for p in batch.prompts:
        p.row.update({"prompt": question, "answer": answer})
    return run_episodes(engine, batch, SamplingParams(max_new_tokens=64, stop=["</tool_call>"]), env, tok,
                        max_turns=max_turns, max_tokens=max_tokens)


def test_the_registry_names_the_adapter_and_the_env_reward():
    assert ENV.get("verifiers") is Verifiers
    assert "env" in REWARD.names()


@needs_verifiers
def test_a_guessing_game_is_played_turn_by_turn_and_scored_by_its_rubric(tok):
    env = Verifiers(f"{ENVS}:load_guess", {"max_turns": 5, "penalty": 0.1})
    ro, metrics = play(tok, env, {"a": ["3<|im_end|>", "9<|im_end|>", "7<|im_end|>"], "b": ["5<|im_end|>"] * 5})
    # a: 3 -> higher, 9 -> lower, 7 -> found (final_env_response ends it); b: never right, 5 turns
    assert [e["turns"] for e in ro.episodes] == [3, 5]
    assert [e["end"] for e in ro.episodes] == ["has_final_env_response", "max_turns_reached"]
    assert ro.episodes[0]["metrics"] == {"found": 1.0, "guesses": 3.0, "num_turns": 3.0}
    assert ro.episodes[0]["reward"] == pytest.approx(1.0 - 0.1 * 3)
    assert ro.episodes[1]["reward"] == pytest.approx(0.0 - 0.1 * 5)
    # the inserted messages are verifiers' replies, rendered by the chat template, context only
    hint = TurnTemplate(tok).between([{"role": "user", "content": "higher"}], closed=True)
    ids = tok.encode("3<|im_end|>", add_special_tokens=False)
    env_ids = tok.encode(hint, add_special_tokens=False)
    assert ro.response_ids[0, : len(ids) + len(env_ids)].tolist() == ids + env_ids
    assert ro.response_mask[0, : len(ids) + len(env_ids)].tolist() == [1.0] * len(ids) + [0.0] * len(env_ids)
    assert "higher" in ro.contexts[0] and "lower" in ro.contexts[0] and ro.texts[0] == "7"
    assert metrics["env/turns_mean"] == 4.0 and metrics["env/end/max_turns_reached"] == 0.5


@needs_verifiers
def test_the_env_reward_reads_the_rubric_score_with_its_metrics(tok):
    env = Verifiers(f"{ENVS}:load_guess", {"penalty": 0.5})
    ro, _ = play(tok, env, {"a": ["6<|im_end|>", "7<|im_end|>"], "b": ["7<|im_end|>"]})
    with RewardRunner([RewardSpec(name="env")]) as runner:
        scored = score_rollouts(runner, ro)
    assert scored.rewards.tolist() == pytest.approx([1.0 - 0.5 * 2, 1.0 - 0.5 * 1])
    assert scored.metrics["reward/env/guesses"] == pytest.approx(1.5)


@needs_verifiers
def test_an_episode_rlvr_ends_first_is_truncated_inside_verifiers_and_still_scored(tok):
    env = Verifiers(f"{ENVS}:load_guess", {"max_turns": 10})
    ro, _ = play(tok, env, {"a": ["1<|im_end|>", "2<|im_end|>"]}, max_turns=2)
    assert ro.episodes[0]["end"] == "max_turns" and ro.episodes[0]["stop_condition"] == "prompt_too_long"
    assert ro.episodes[0]["metrics"]["guesses"] == 2.0 and ro.episodes[0]["reward"] == 0.0


@needs_verifiers
def test_the_episodes_of_one_row_are_scored_as_a_group(tok):
    """Group reward functions see the episodes of one row together; another row is its own group."""
    env = Verifiers(f"{ENVS}:load_guess_group")
    row, other = {"prompt": "Guess my number (1-10).", "answer": "7"}, {"prompt": "Guess again.", "answer": "7"}
    episodes = [env.start(row), env.start(row), env.start(other)]
    turns = [["7"], ["5", "7"], ["2", "3", "7"]]
    for ep, guesses in zip(episodes, turns):
        for g in guesses:
            reply = env.respond(ep, g)
        assert reply.done and reply.reason == "has_final_env_response"
    records = env.finish(episodes, ["has_final_env_response"] * 3)
    # row: 1 and 2 guesses -> only the first has the fewest; other: alone in its group, so fewest
    assert [r["metrics"]["fewest_guesses"] for r in records] == [1.0, 0.0, 1.0]
    assert [r["reward"] for r in records] == [1.5, 1.0, 1.5]


@needs_verifiers
def test_tool_calls_are_bridged_to_openai_style_and_results_come_back_as_tool_messages(tok):
    env = Verifiers(f"{ENVS}:load_tools")
    call = format_tool_call("multiply", {"a": 12, "b": 7})
    bad = "<tool_call>{\"name\": multiply}</tool_call>"
    script = {"a": [call, "84<|im_end|>"], "b": [bad, "85<|im_end|>"]}
    ro, metrics = play(tok, env, script, question="12*7?", answer="84")
    assert [e["turns"] for e in ro.episodes] == [2, 2]
    assert [e["end"] for e in ro.episodes] == ["no_tools_called"] * 2
    assert ro.episodes[0]["tool_calls"] == {"multiply": 1} and ro.episodes[1]["tool_errors"] == 1
    assert "84" in ro.contexts[0].split("</tool_call>")[1]  # the tool's result, inserted as a tool message
    inserted = TurnTemplate(tok).between([{"role": "tool", "content": "84"}])
    first = tok.encode(call, add_special_tokens=False)
    n = len(first) + len(tok.encode(inserted, add_special_tokens=False))
    assert tok.decode(ro.response_ids[0, len(first):n].tolist()) == inserted
    assert ro.env_mask[0, len(first):n].sum().item() == n - len(first)
    assert [e["reward"] for e in ro.episodes] == [1.0, 0.0]
    assert ro.episodes[0]["metrics"]["multiply_calls"] == 1.0
    assert metrics["env/tool_calls/multiply"] == 0.5


def test_assistant_turn_splits_content_and_calls():
    content, calls, bad = assistant_turn('Let me.<tool_call>{"name": "m", "arguments": {"a": 1}}</tool_call>')
    assert (content, calls, bad) == ("Let me.", [{"id": "call_0", "name": "m", "arguments": '{"a": 1}'}], 0)
    assert assistant_turn("just 7") == ("just 7", [], 0)


@needs_verifiers
def test_the_adapter_works_when_called_from_a_thread_with_its_own_running_loop(tok):
    import asyncio

    env = Verifiers(f"{ENVS}:load_guess")
    out = {}

    async def inside_a_loop():  # e.g. a notebook, or a server thread: no nested-loop error
        out["ro"] = play(tok, env, {"a": ["7<|im_end|>"]})[0]

    t = threading.Thread(target=lambda: asyncio.run(inside_a_loop()))
    t.start()
    t.join(60)
    assert out["ro"].episodes[0]["reward"] == 1.0


@needs_verifiers
def test_a_relative_file_is_found_next_to_the_recipe():
    env = Verifiers("vf_envs.py:load_guess", {"max_turns": 3}, base_dir=ENVS.parent)  # not in the current folder
    assert type(env.env).__name__ == "GuessEnv" and env.env.max_turns == 3


@needs_verifiers
def test_bad_references_fail_with_a_message_naming_them(tmp_path):
    with pytest.raises(VerifiersError, match="cannot load verifiers environment 'no-such-env'"):
        Verifiers("no-such-env")
    (tmp_path / "notenv.py").write_text("def load_environment():\n    return 42\n")
    with pytest.raises(VerifiersError, match="gave int, not a verifiers MultiTurnEnv"):
        Verifiers(f"{tmp_path / 'notenv.py'}:load_environment")


@needs_verifiers
def test_an_env_response_that_hangs_ends_the_episode_and_one_that_raises_is_a_loud_error(tok, tmp_path):
    (tmp_path / "bad_envs.py").write_text(BAD_ENVS)
    env = Verifiers(f"{tmp_path / 'bad_envs.py'}:load_environment", {"mode": "hang"}, timeout_s=0.5)
    ro, metrics = play(tok, env, {"a": ["1<|im_end|>", "2<|im_end|>"]})
    assert ro.episodes[0]["end"] == "env_timeout" and ro.episodes[0]["turns"] == 1
    assert ro.episodes[0]["reward"] == 0.0 and metrics["env/end/env_timeout"] == 1.0
    env = Verifiers(f"{tmp_path / 'bad_envs.py'}:load_environment", {"mode": "raise"})
    with pytest.raises(VerifiersError, match="the environment's rollout raised RuntimeError: the env broke"):
        play(tok, env, {"a": ["1<|im_end|>", "2<|im_end|>"]})


BAD_ENVS = """
import asyncio

import verifiers as vf
from datasets import Dataset


class Bad(vf.MultiTurnEnv):
    def __init__(self, mode, **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    async def env_response(self, messages, state, **kwargs):
        if self.mode == "hang":
            await asyncio.sleep(3600)
        raise RuntimeError("the env broke")


def load_environment(mode):
    return Bad(mode, dataset=Dataset.from_list([{"question": "q", "answer": "a"}]),
               rubric=vf.Rubric(funcs=[lambda completion, **kw: 1.0]))
"""


def test_without_verifiers_or_with_a_too_old_or_too_new_one_the_error_says_what_to_install(monkeypatch):
    import types

    monkeypatch.setitem(sys.modules, "verifiers", None)  # `import verifiers` raises ImportError
    with pytest.raises(VerifiersError, match=r"pip install 'rlvr\[verifiers\]' \(verifiers>=0.1.10,<0.4"):
        import_verifiers()
    fake = types.ModuleType("verifiers")
    fake.MultiTurnEnv = object
    monkeypatch.setitem(sys.modules, "verifiers", fake)
    for version, why in [("0.4.0", r"is 0.4.0 \(0.4 replaced that API"), ("0.1.9.post0", "is 0.1.9.post0$")]:
        fake.__version__ = version
        with pytest.raises(VerifiersError, match=f"supports verifiers>=0.1.10,<0.4 .*the installed verifiers {why}"):
            import_verifiers()
    fake.__version__ = "0.3.1"
    del fake.MultiTurnEnv
    with pytest.raises(VerifiersError, match="verifiers 0.3.1 has no MultiTurnEnv"):
        import_verifiers()


def test_a_recipe_with_a_verifiers_env_validates_and_a_misspelt_key_is_named(tmp_path):
    from rlvr.config import ConfigError, load_config

    recipe = Path(__file__).resolve().parents[3] / "recipes" / "agents" / "calculator.yaml"
    env = "env={name: verifiers, environment: 'my_env.py:load_environment', args: {max_turns: 2}}"
    cfg = load_config(recipe, [env, "reward.functions=[{name: env}]"])
    assert cfg.env.name == "verifiers" and cfg.env.kwargs["args"] == {"max_turns": 2}
    with pytest.raises(ConfigError, match="env.enviroment"):
        load_config(recipe, ["env={name: verifiers, enviroment: 'x.py:f'}"])


@needs_verifiers
def test_a_tool_envs_tools_are_offered_to_the_chat_template_in_openai_form():
    (schema,) = Verifiers(f"{ENVS}:load_tools").tool_schemas()
    assert schema["type"] == "function" and schema["function"]["name"] == "multiply"
    assert schema["function"]["description"].startswith("Multiplies two integers")
    params = schema["function"]["parameters"]
    assert set(params["properties"]) == {"a", "b"} and params["properties"]["a"]["type"] == "integer"
    assert sorted(params["required"]) == ["a", "b"]
    assert Verifiers(f"{ENVS}:load_guess").tool_schemas() == []  # a multi-turn env without tools
