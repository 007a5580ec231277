import torch

from rlvr.buffer import make_micro_batch
from rlvr.learner.logprobs import response_logprobs
from rlvr.rollout import HFEngine, SamplingParams
from rlvr.rollout.hf import distinct_prompts
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


def test_distinct_prompts_worked_example():
    assert distinct_prompts([[1, 2], [1, 2], [3], [1, 2]]) == ([0, 2], [0, 0, 1, 0])
    assert distinct_prompts([]) == ([], [])


def test_each_prompt_is_prefilled_once_and_samples_as_if_it_were_not(tiny):
    """Prompts of three lengths (so left padding differs), groups of 3, 2 and 1: the engine runs the
    distinct prompts once and gives the same greedy replies, and the same sampled ones from one seed,
    as an engine that runs every row's prompt."""
    model, tok = tiny
    shared, plain = HFEngine(model, tok), HFEngine(model, tok, share_prefill=False)
    assert shared.share_prefill and not HFEngine(model, tok, synced=True).share_prefill
    batch = PromptBatch(prompts(tok, ["12+7=", "5+5=", "hello there, 3+4="]), [3, 2, 1])
    rows_seen = []
    hook = model.register_forward_pre_hook(lambda m, args, kw: rows_seen.append(tuple(kw["input_ids"].shape)),
                                           with_kwargs=True)
    try:
        greedy = SamplingParams(max_new_tokens=6, greedy=True)
        a = shared.generate(batch, greedy)
        width = max(len(p.token_ids) for p in batch.prompts)
        assert rows_seen[:2] == [(3, width - 1), (6, 1)]  # the 3 distinct prompts, then every row's last token
        start = len(rows_seen)
        b = plain.generate(batch, greedy)
        assert rows_seen[start] == (6, width)  # without sharing: every row's whole prompt
    finally:
        hook.remove()
    assert a.texts == b.texts and torch.equal(a.response_ids, b.response_ids)
    assert (a.rollout_logprobs - b.rollout_logprobs).abs().max() < 1e-5
    params = SamplingParams(max_new_tokens=6, temperature=0.7)
    torch.manual_seed(3)
    a = shared.generate(batch, params)
    torch.manual_seed(3)
    b = plain.generate(batch, params)
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
    assert (a.rollout_logprobs - b.rollout_logprobs).abs().max() < 1e-5
    assert len(set(a.texts[:3])) > 1  # the three samples of the first prompt are not copies of one
