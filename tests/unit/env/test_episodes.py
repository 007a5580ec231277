"""Multi-turn episodes: token-exact trajectories, the masks, the budgets and the metrics."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr.env import Reply, format_tool_call, run_episodes
from rlvr.env.calculator import Calculator
from rlvr.env.template import TurnTemplate
from rlvr.rollout import HFEngine, SamplingParams
from rlvr.rollout.base import assemble_rollouts, rows_of
from rlvr.types import Prompt, PromptBatch


class ScriptedEngine:
    """Answers each context with the next scripted reply of its episode (keyed by the prompt's uid
    and how many turns the context already holds), recording every call."""

    def __init__(self, tokenizer, script):
        self.tokenizer, self.script, self.calls = tokenizer, script, []
        self.eos_ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]

    def generate(self, batch, params):
        self.calls.append(([list(p.token_ids) for p in batch.prompts], params))
        tokens = []
        for p in batch.prompts:
            turn = self.tokenizer.decode(p.token_ids).count("<|im_start|>assistant") - 1
            tokens.append(self.tokenizer.encode(self.script[p.uid][turn], add_special_tokens=False))
        return assemble_rollouts(batch, rows_of(batch), tokens, [[-0.5] * len(t) for t in tokens],
                                 lambda t: self.tokenizer.decode(t, skip_special_tokens=True), self.eos_ids,
                                 self.tokenizer.pad_token_id, params.stop)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def prompt(tok, uid, question):
    text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    return Prompt(uid, text, tok.encode(text, add_special_tokens=False), "84", {"question": question})


def test_a_calculator_episode_is_token_exact_with_the_environment_masked(tok):
    call = format_tool_call("calculator", {"expression": "12*7"})
    engine = ScriptedEngine(tok, {"a": [call, "84<|im_end|>"], "b": ["85<|im_end|>"]})
    batch = PromptBatch([prompt(tok, "a", "12*7?"), prompt(tok, "b", "12*7?")], [1, 1])
    ro, metrics = run_episodes(engine, batch, SamplingParams(max_new_tokens=64, stop=["</tool_call>"]),
                               Calculator(), tok, max_turns=4, max_tokens=200)
    inserted = "<|im_end|>\n<|im_start|>tool\n84<|im_end|>\n<|im_start|>assistant\n"
    assert TurnTemplate(tok).between([{"role": "tool", "content": "84"}]) == inserted
    first = tok.encode(call, add_special_tokens=False)
    env_ids = tok.encode(inserted, add_special_tokens=False)
    answer = tok.encode("84<|im_end|>", add_special_tokens=False)
    n = len(first) + len(env_ids) + len(answer)
    # the ids are the model's as generated and the environment's as inserted, nothing re-tokenised
    assert ro.response_ids[0, :n].tolist() == first + env_ids + answer
    assert ro.response_mask[0, :n].tolist() == [1.0] * len(first) + [0.0] * len(env_ids) + [1.0] * len(answer)
    assert ro.env_mask[0, :n].tolist() == [0.0] * len(first) + [1.0] * len(env_ids) + [0.0] * len(answer)
    assert ro.rollout_logprobs[0, :n].tolist() == [-0.5] * len(first) + [0.0] * len(env_ids) + [-0.5] * len(answer)
    assert int(ro.lengths[0]) == len(first) + len(answer) and int(ro.widths[0]) == n  # the model's tokens count
    assert ro.response_mask[0, n:].sum() == 0 and ro.env_mask[0, n:].sum() == 0
    assert ro.texts == ["84", "85"] and ro.contexts[0] == call + "\ntool\n84\nassistant\n" and ro.contexts[1] == ""
    assert ro.episodes == [{"turns": 2, "tool_calls": {"calculator": 1}, "tool_errors": 0, "end": "answer"},
                           {"turns": 1, "tool_calls": {}, "tool_errors": 0, "end": "answer"}]
    # turn 2 was one generate call for the one episode still running, on the exact ids so far
    (ctx1, _), (ctx2, _) = engine.calls
    assert len(ctx1) == 2 and ctx2 == [batch.prompts[0].token_ids + first + env_ids]
    assert metrics["env/turns_mean"] == 1.5 and metrics["env/tool_calls/calculator"] == 0.5
    assert metrics["env/end/answer"] == 1.0 and metrics["env/tool_errors_mean"] == 0.0


class Nagging:
    """Answers every turn with "again", never ends the episode itself."""

    def start(self, row):
        return None

    def respond(self, state, turn):
        return Reply([{"role": "user", "content": "again"}])


def test_the_turn_and_token_budgets_end_episodes(tok):
    engine = ScriptedEngine(tok, {"a": ["x<|im_end|>"] * 5})
    batch = PromptBatch([prompt(tok, "a", "go")], [2])
    ro, metrics = run_episodes(engine, batch, SamplingParams(max_new_tokens=8), Nagging(), tok, max_turns=3,
                               max_tokens=500)
    assert [e["turns"] for e in ro.episodes] == [3, 3] and metrics["env/end/max_turns"] == 1.0
    assert len(engine.calls) == 3 and all(len(ctx) == 2 for ctx, _ in engine.calls)  # G episodes side by side
    # a budget of 30 tokens: the second turn's insertion would not leave room to act on it
    engine = ScriptedEngine(tok, {"a": ["x" * 12 + "<|im_end|>"] * 5})
    ro, metrics = run_episodes(engine, batch, SamplingParams(max_new_tokens=20), Nagging(), tok, max_turns=5,
                               max_tokens=30)
    assert metrics["env/end/max_tokens"] == 1.0 and int(ro.widths.max()) <= 30
    # a turn cut by the budget ends the episode with a length finish, the model's tokens only up to it
    engine = ScriptedEngine(tok, {"a": ["y" * 40]})
    ro, _ = run_episodes(engine, batch, SamplingParams(max_new_tokens=64), Nagging(), tok, max_turns=2, max_tokens=16)
    assert ro.finish_reason == ["length", "length"] and ro.lengths.tolist() == [16, 16] and ro.texts == ["y" * 16] * 2


def test_hf_engine_episodes_condition_each_turn_on_the_exact_ids(tiny_model_dir, tok):
    """The real transformers engine: turn t's context is the prompt, every earlier turn's sampled
    ids and the inserted ids, exactly; the logged log-probs are the engine's for model tokens."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    engine = HFEngine(model, tok)
    seen = []
    real = engine.generate

    def spy(batch, params):
        ro = real(batch, params)
        seen.append(([list(p.token_ids) for p in batch.prompts], [ro.response_ids[i, : int(ro.lengths[i])].tolist()
                                                                    for i in range(len(ro))], ro))
        return ro

    engine.generate = spy
    torch.manual_seed(0)
    batch = PromptBatch([prompt(tok, "a", "1+2="), prompt(tok, "b", "30+4=")], [2, 1])
    ro, _ = run_episodes(engine, batch, SamplingParams(max_new_tokens=5), Nagging(), tok, max_turns=3, max_tokens=200)
    inserted = tok.encode(TurnTemplate(tok).between([{"role": "user", "content": "again"}]), add_special_tokens=False)
    assert len(seen) == 3 and all(len(ctx) == 3 for ctx, _, _ in seen)
    for i in range(3):
        p = batch.prompts[int(ro.group[i])].token_ids
        trajectory, expected = [], []
        for turn, (ctx, outs, turn_ro) in enumerate(seen):
            assert ctx[i] == p + trajectory  # exactly the ids so far
            closed = outs[i] and outs[i][-1] == tok.convert_tokens_to_ids("<|im_end|>")
            env = inserted[1:] if closed else inserted  # a turn that ended with <|im_end|> is not closed again
            trajectory = trajectory + outs[i] + (env if turn < 2 else [])
            expected += turn_ro.rollout_logprobs[i, : len(outs[i])].tolist() + ([0.0] * len(env) if turn < 2 else [])
        n = len(trajectory)
        assert ro.response_ids[i, :n].tolist() == trajectory
        torch.testing.assert_close(ro.rollout_logprobs[i, :n], torch.tensor(expected))


class SelfScoring:
    """Ends after one turn; `finish` scores each episode by its answer's length and records why it ended."""

    def start(self, row):
        return {"row": row}

    def respond(self, state, turn):
        state["answer"] = turn
        return Reply.end("answer")

    def finish(self, states, ends):
        return [{"reward": float(len(s.get("answer", ""))), "metrics": {"ended_by_env": float(e == "answer")}}
                for s, e in zip(states, ends)]


def test_an_environment_that_scores_its_episodes_reaches_the_env_reward(tok):
    from rlvr.reward import RewardRunner, RewardSpec, score_rollouts

    engine = ScriptedEngine(tok, {"a": ["12<|im_end|>"], "b": ["12345<|im_end|>"]})
    batch = PromptBatch([prompt(tok, "a", "q"), prompt(tok, "b", "q")], [1, 1])
    ro, _ = run_episodes(engine, batch, SamplingParams(max_new_tokens=16), SelfScoring(), tok, max_turns=2,
                         max_tokens=100)
    assert [e["reward"] for e in ro.episodes] == [2.0, 5.0] and ro.episodes[0]["end"] == "answer"
    with RewardRunner([RewardSpec(name="env")]) as runner:
        scored = score_rollouts(runner, ro)
    assert scored.rewards.tolist() == [2.0, 5.0]
    assert scored.metrics["reward/env/ended_by_env"] == 1.0


def test_the_env_reward_without_an_episode_reward_says_what_is_missing():
    from rlvr.reward.builtins import env_reward

    with pytest.raises(ValueError, match="needs an `env:` section"):
        env_reward("p", "c", {"answer": "1"})
    with pytest.raises(ValueError, match="gave this episode no reward"):
        env_reward("p", "c", {"episode": {"turns": 1}})
    assert env_reward("p", "c", {"episode": {"reward": 0.5, "metrics": {"x": 1, "s": "no"}}}) == (0.5, {"x": 1.0})


def test_a_finish_that_returns_too_few_records_is_an_error(tok):
    class Short(SelfScoring):
        def finish(self, states, ends):
            return []

    engine = ScriptedEngine(tok, {"a": ["1<|im_end|>"]})
    with pytest.raises(ValueError, match="Short.finish returned 0 records for 1 episodes"):
        run_episodes(engine, PromptBatch([prompt(tok, "a", "q")], [1]), SamplingParams(max_new_tokens=8), Short(),
                     tok, max_turns=1, max_tokens=50)
