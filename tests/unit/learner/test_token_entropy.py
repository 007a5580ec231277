import math

import torch

from rlvr.learner.logprobs import token_entropy


def test_entropy_matches_the_direct_formula_across_chunks():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11) * 3
    logp = torch.log_softmax(logits, -1)
    direct = -(logp.exp() * logp).sum(-1)
    for rows in (1, 4, 15, 1024):  # chunks that split the flattened positions unevenly
        torch.testing.assert_close(token_entropy(logits, torch.logsumexp(logits, -1), chunk_rows=rows), direct)


def test_uniform_example():
    logits = torch.zeros(1, 1, 2)
    assert abs(token_entropy(logits, torch.logsumexp(logits, -1)).item() - math.log(2)) < 1e-6
