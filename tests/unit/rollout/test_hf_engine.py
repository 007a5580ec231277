import torch

from rlvr.buffer import make_micro_batch
from rlvr.learner.logprobs import response_logprobs
from rlvr.rollout import HFEngine, SamplingParams
from rlvr.types import AdvantageBatch, LossNorm, Prompt, PromptBatch, ScoredRollouts


def prompts(tok, texts):
    return [Prompt(f"t#{i}", t, tok(t).input_ids, "0", {}) for i, t in enumerate(texts)]


def test_groups_shapes_and_masks(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    torch.manual_seed(0)
    ro = engine.generate(PromptBatch(prompts(tok, ["1+2=", "33+4="]), [3, 2]), SamplingParams(max_new_tokens=5))
    assert ro.group.tolist() == [0, 0, 0, 1, 1]
    assert ro.response_ids.shape[0] == ro.response_mask.shape[0] == ro.rollout_logprobs.shape[0] == 5
    for i in range(5):
        n = int(ro.lengths[i])
        assert 1 <= n <= 5
        assert ro.response_mask[i, :n].eq(1).all() and ro.response_mask[i, n:].eq(0).all()
        assert (ro.rollout_logprobs[i, :n] <= 0).all() and ro.rollout_logprobs[i, n:].eq(0).all()
        ids = ro.response_ids[i, :n].tolist()
        ended = tok.eos_token_id in ids
        assert ro.finish_reason[i] == ("stop" if ended else "length")
        if ended:
            assert ids.index(tok.eos_token_id) == n - 1  # EOS is the last kept token
        assert ro.texts[i] == tok.decode(ids, skip_special_tokens=True)


def test_rollout_logprobs_match_the_learner(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    torch.manual_seed(1)
    params = SamplingParams(max_new_tokens=6, temperature=0.7)
    ro = engine.generate(PromptBatch(prompts(tok, ["12+7=", "5+5=", "hello"]), [2, 2, 2]), params)
    n = len(ro)
    batch = AdvantageBatch(ScoredRollouts(ro, torch.zeros(n), {}, torch.zeros(n, dtype=torch.bool)),
                           torch.zeros(n), torch.ones(n), None, None)
    mb = make_micro_batch(batch, list(range(n)), LossNorm(1, 1, 6), tok.pad_token_id)
    with torch.no_grad():
        lp, _ = response_logprobs(model, mb, temperature=0.7)
    diff = ((lp - ro.rollout_logprobs[:, : lp.shape[1]]).abs() * mb.response_mask).max()
    assert diff < 1e-4


def test_stop_string_cuts_text_and_ends_response(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    batch = PromptBatch(prompts(tok, ["1+2="]), [1])
    free = engine.generate(batch, SamplingParams(max_new_tokens=12, greedy=True))
    text = free.texts[0]
    assert len(text) >= 4 and free.finish_reason == ["length"], text  # the random model rambles
    stop = text[2:4]  # a stop string the greedy continuation is known to contain
    cut = engine.generate(batch, SamplingParams(max_new_tokens=12, greedy=True, stop=(stop,)))
    assert cut.finish_reason == ["stop"]
    assert cut.texts[0] == text[: text.find(stop)]
    # one token per character: the response keeps the tokens up to and including the stop string
    assert int(cut.lengths[0]) == text.find(stop) + len(stop)
    assert cut.response_ids[0, : int(cut.lengths[0])].tolist() == free.response_ids[0, : int(cut.lengths[0])].tolist()
