"""The optimiser: fused AdamW where torch has the kernel, the same update as the Python loop, and the
schedule's worked example."""

import pytest
import torch

from rlvr.learner.optim import OptimConfig, fused_if_supported, lr_lambda, make_optimizer


def optim_config(**kw):
    base = dict(lr=1e-2, weight_decay=0.1, betas=(0.9, 0.999), warmup_steps=0, schedule="constant",
                min_lr_ratio=0.0, total_steps=1, max_grad_norm=None)
    return OptimConfig(**(base | kw))


def test_the_optimizer_is_fused_on_cpu_and_gives_the_for_loop_update(tiny):
    model, _ = tiny
    opt = make_optimizer(model, optim_config())
    assert opt.defaults["fused"] is True
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    copies = [p.detach().clone().requires_grad_(True) for p in params]
    loop = torch.optim.AdamW(copies, lr=1e-2, betas=(0.9, 0.999), weight_decay=0.1, foreach=False)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, c in zip(params, copies):
            p.grad = torch.randn(p.shape, generator=g)
            c.grad = p.grad.clone()
        opt.step()
        loop.step()
    with torch.no_grad():
        assert min(float((p - s).abs().max()) for p, s in zip(params, start)) > 1e-2  # every tensor moved
        assert max(float((p - c).abs().max()) for p, c in zip(params, copies)) < 1e-6  # as the loop moved it


def test_fused_only_where_the_kernel_exists():
    assert fused_if_supported([torch.zeros(3), torch.zeros(2, dtype=torch.bfloat16)]) == {"fused": True}
    assert fused_if_supported([torch.zeros(3), torch.zeros(3, device="meta")]) == {}
    assert fused_if_supported([torch.zeros(3, dtype=torch.int64)]) == {}
    assert fused_if_supported([]) == {}


def test_frozen_parameters_stay_out_of_the_optimizer(tiny):
    model, _ = tiny
    model.get_input_embeddings().weight.requires_grad_(False)
    opt = make_optimizer(model, optim_config())
    held = {id(p) for group in opt.param_groups for p in group["params"]}
    assert id(model.get_input_embeddings().weight) not in held
    assert len(held) == sum(1 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("schedule,expected", [("cosine", [0.5, 1.0, 1.0, 0.854, 0.5, 0.146]),
                                               ("constant", [0.5, 1.0, 1.0, 1.0, 1.0, 1.0])])
def test_warmup_then_schedule(schedule, expected):
    f = lr_lambda(2, 6, schedule, 0.0)
    assert [round(f(i), 3) for i in range(6)] == expected
