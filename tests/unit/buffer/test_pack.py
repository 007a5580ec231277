import torch

from rlvr.buffer import pack, plan_micro_batches, split_mini_batches
from rlvr.learner.logprobs import response_logprobs
from rlvr.rollout import HFEngine, SamplingParams
from rlvr.types import AdvantageBatch, LossNorm, Prompt, PromptBatch, ScoredRollouts


def test_plan_docstring_example_and_budget():
    # rows 0..3 with total lengths 10, 9, 3, 2 and budget 20
    plans = plan_micro_batches([5, 5, 1, 1], [5, 4, 2, 1], [0, 1, 2, 3], 20)
    assert plans == [[0, 1], [2, 3]]
    # a row longer than the budget still gets its own micro-batch
    assert plan_micro_batches([50], [50], [0], 20) == [[0]]


def test_split_mini_batches_covers_every_row_once():
    parts = split_mini_batches(10, 3, torch.Generator().manual_seed(0))
    assert sorted(torch.cat(parts).tolist()) == list(range(10))
    assert [len(p) for p in parts] == [4, 3, 3]
    assert torch.equal(split_mini_batches(5, 1, torch.Generator())[0], torch.arange(5))


def _batch(model, tok, texts, g=3, n_new=6):
    prompts = [Prompt(f"t#{i}", t, tok(t).input_ids, "0", {}) for i, t in enumerate(texts)]
    torch.manual_seed(0)
    ro = HFEngine(model, tok).generate(PromptBatch(prompts, [g] * len(prompts)), SamplingParams(max_new_tokens=n_new))
    n = len(ro)
    scored = ScoredRollouts(ro, torch.zeros(n), {}, torch.zeros(n, dtype=torch.bool))
    return AdvantageBatch(scored, torch.randn(n), torch.ones(n), None, None)


def test_packing_respects_budget_and_padding_does_not_change_logprobs(tiny):
    model, tok = tiny
    batch = _batch(model, tok, ["1+2=", "123456+7=", "9="])
    ro = batch.scored.rollouts
    norm = LossNorm(1, 1, 6)
    mbs = pack(batch, torch.arange(len(ro)), norm, budget=40, pad_id=tok.pad_token_id)
    assert sorted(torch.cat([m.index for m in mbs]).tolist()) == list(range(len(ro)))
    for m in mbs:
        assert m.input_ids.numel() <= 40 or len(m.index) == 1
        # every row alone, unpadded, gives the same log-probs as inside the padded micro-batch
        with torch.no_grad():
            together, _ = response_logprobs(model, m, 1.0)
            for j, row in enumerate(m.index.tolist()):
                single = pack(batch, torch.tensor([row]), norm, budget=10_000, pad_id=tok.pad_token_id)[0]
                alone, _ = response_logprobs(model, single, 1.0)
                n = int(ro.lengths[row])
                torch.testing.assert_close(together[j, :n], alone[0, :n], rtol=1e-4, atol=1e-5)
