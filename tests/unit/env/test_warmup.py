"""The warm-up (a supervised cold start): demonstrations replayed token-exactly through the
environment, the loss on model tokens only, and the errors a bad demonstration column gives."""

import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr.buffer import as_batch, pack
from rlvr.config import ConfigError, validate
from rlvr.data.errors import DataError
from rlvr.data.synthetic import generate
from rlvr.env.calculator import Calculator
from rlvr.learner import BatchingConfig, Learner, OptimConfig, ppo_clip
from rlvr.learner.aggregation import token_mean
from rlvr.learner.logprobs import response_logprobs
from rlvr.run.warmup import demonstrations, end_of_turn_id
from rlvr.types import LossNorm, Prompt, ScoredRollouts


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def chat_prompt(tok, uid, row):
    text = tok.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False,
                                   add_generation_prompt=True)
    return Prompt(uid, text, tok.encode(text, add_special_tokens=False), row["answer"], row)


def end_id(tok):
    return end_of_turn_id(tok, [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")])


def test_a_calculator_demonstration_is_the_episode_rl_would_play(tok):
    row = generate("sum", num_rows=1, seed=3)[0]
    a, b = row["a"], row["b"]
    ro = demonstrations([chat_prompt(tok, "sum#0", row)], tok, Calculator(), column="demonstration",
                        end_id=end_id(tok), stop=["</tool_call>"], max_turns=3, max_tokens=300)
    call = row["demonstration"][0]
    assert f'"expression": "{a}+{b}"' in call
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end_id(tok) == im_end  # ChatML closes a turn with <|im_end|>
    # the call ends at the stop string (the environment closes the turn); the tool really ran
    first = tok.encode(call, add_special_tokens=False)
    inserted = tok.encode(f"<|im_end|>\n<|im_start|>tool\n{a + b}<|im_end|>\n<|im_start|>assistant\n",
                          add_special_tokens=False)
    answer = tok.encode(str(a + b), add_special_tokens=False) + [im_end]
    n = len(first) + len(inserted) + len(answer)
    assert ro.response_ids[0, :n].tolist() == first + inserted + answer
    assert ro.response_mask[0].tolist() == [1.0] * len(first) + [0.0] * len(inserted) + [1.0] * len(answer)
    assert ro.env_mask[0].tolist() == [0.0] * len(first) + [1.0] * len(inserted) + [0.0] * len(answer)
    assert ro.episodes[0]["tool_calls"] == {"calculator": 1} and ro.episodes[0]["end"] == "answer"


def test_a_single_turn_demonstration_ends_with_the_end_of_turn_token(tok):
    row = generate("sum", num_rows=2, seed=1)
    prompts = [chat_prompt(tok, f"sum#{i}", r) for i, r in enumerate(row)]
    ro = demonstrations(prompts + prompts[:1], tok, None, column="answer", end_id=end_id(tok), stop=[],
                        max_turns=1, max_tokens=16)
    for i, r in enumerate(row + row[:1]):  # a row drawn twice is two samples, each whole
        ids = tok.encode(r["answer"], add_special_tokens=False) + [end_id(tok)]
        assert ro.response_ids[i, : len(ids)].tolist() == ids
        assert int(ro.lengths[i]) == len(ids)
    assert ro.env_mask is None


@pytest.mark.parametrize("row, env, message", [
    ({"prompt": "1+1=", "answer": "2"}, None, "column 'demonstration' is missing"),
    ({"prompt": "1+1=", "answer": "2", "demonstration": 7}, None, "column 'demonstration' holds int 7;"),
    ({"prompt": "1+1=", "answer": "2", "demonstration": ["a", ""]}, Calculator(), "a list of non-empty strings"),
    ({"prompt": "1+1=", "answer": "2", "demonstration": ["a", "b"]}, None, "has no env to answer between them"),
    ({"prompt": "1+1=", "answer": "2", "demonstration": ["a", "b", "c", "d"]}, Calculator(),
     "more than rollout.max_turns (3)"),
])
def test_a_bad_demonstration_names_the_key_and_the_row(tok, row, env, message):
    with pytest.raises(DataError) as e:
        demonstrations([chat_prompt(tok, "my.jsonl#41", row)], tok, env, column="demonstration",
                       end_id=end_id(tok), stop=["</tool_call>"], max_turns=3, max_tokens=100)
    assert "warmup.column" in str(e.value) and message in str(e.value)
    assert "my.jsonl#41" in str(e.value)


def test_imitate_is_the_mean_negative_log_likelihood_of_the_model_tokens(tiny_model_dir, tok):
    rows = generate("sum", num_rows=3, seed=2)
    prompts = [chat_prompt(tok, f"sum#{i}", r) for i, r in enumerate(rows)]
    ro = demonstrations(prompts, tok, Calculator(), column="demonstration", end_id=end_id(tok),
                        stop=["</tool_call>"], max_turns=3, max_tokens=300)
    batch = as_batch(ScoredRollouts(ro, torch.zeros(3), {}, torch.zeros(3, dtype=torch.bool)))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    optim = OptimConfig(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, schedule="constant",
                        min_lr_ratio=0.0, total_steps=1, max_grad_norm=None)
    learner = Learner(model, None, Accelerator(cpu=True), policy_loss=ppo_clip, aggregation=token_mean, optim=optim,
                      batching=BatchingConfig(1, 1, micro_batch_tokens=150, max_new_tokens=100, pad_id=tok.pad_token_id,
                                              seed=0), temperature=0.7)  # the warm-up ignores the RL temperature
    # by hand, one micro-batch, the environment's tokens excluded by the mask
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    (mb,) = pack(batch, torch.arange(3), LossNorm(1.0, 1.0, 100), 10_000, tok.pad_token_id)
    logp, _ = response_logprobs(ref, mb, 1.0)
    want = -(logp * mb.response_mask).sum() / mb.response_mask.sum()
    want.backward()
    frozen = torch.optim.SGD(learner.model.parameters(), lr=0.0)  # gradients only, no update
    metrics = learner.imitate(batch, frozen)
    assert metrics["warmup/loss"] == pytest.approx(float(want), rel=1e-5)
    assert metrics["warmup/loss"] > 1.0  # a random model: several nats per token
    for (name, p), q in zip(learner.model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=name)
    # and the environment's tokens do matter as context: masking them from attention changes the loss
    assert ro.env_mask.sum() > 0


def test_warmup_is_refused_under_deepspeed_by_name(tmp_path):
    raw = {"model": {"path": "m"}, "data": {"train": {"path": "synthetic:sum", "args": {"num_rows": 10}}},
           "reward": {"functions": [{"name": "exact"}]}, "learner": {"strategy": "zero3"},
           "warmup": {"steps": 5}, "eval": {"at_start": False}}
    with pytest.raises(ConfigError) as e:
        validate(raw, tmp_path)
    assert "warmup.steps: the warm-up needs an optimiser of its own" in str(e.value)
    raw["learner"]["strategy"] = "ddp"
    assert validate(raw, tmp_path).warmup.steps == 5


def test_rlvr_eval_plays_the_recipes_episodes(tiny_model_dir, monkeypatch):
    """`rlvr eval` (eval_model) on an agent recipe scores whole episodes, as the run's own evaluation
    does: a policy that calls the calculator and then answers is right only when the tool answers
    between its turns; with `env: null` its first turn (the call) is all that is scored."""
    from pathlib import Path

    from rlvr.config import load_config
    from rlvr.eval import standalone
    from rlvr.run import build
    from rlvr.run.warmup import Demonstrator

    recipe = Path(__file__).resolve().parents[3] / "recipes" / "agents" / "calculator.yaml"
    overrides = ["data.eval.args.num_rows=4", f"model.path={tiny_model_dir}"]

    def accuracy(extra):
        cfg = load_config(recipe, overrides + extra)
        tok = build.load_tokenizer(tiny_model_dir)
        prompts, _ = build.load_prompt_set(cfg, cfg.data.eval, tok, recipe.parent, build.make_env(cfg, recipe.parent))
        turns = {p.uid: p.row["demonstration"] for p in prompts}
        scripted = Demonstrator(tok, turns, end_id(tok), cfg.rollout.stop)
        monkeypatch.setattr(standalone, "HFEngine", lambda *a, **k: scripted)
        out = standalone.eval_model(tiny_model_dir, cfg, recipe.parent)
        return out["eval/accuracy"], scripted.played

    acc, played = accuracy([])
    assert acc == 1.0 and set(played.values()) == {2}  # the call, then the answer after the tool's reply
    acc, played = accuracy(["env=null", "rollout.max_turns=1"])
    assert acc == 0.0 and set(played.values()) == {1}
