"""Snapshot a model's state (flags, parameters, buffers, .grad) to check that a tool left it as found."""

from __future__ import annotations

import torch
from torch import nn


def snapshot(model: nn.Module) -> dict:
    return {
        "flags": {n: m.training for n, m in model.named_modules()},
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(m._backward_pre_hooks))
            for m in model.modules()
        ],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["flags"] == before["flags"]
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), f"{k} changed"
    for n, g in before["grads"].items():
        g2 = after["grads"][n]
        assert (g is None) == (g2 is None), f"{n}.grad changed"
        if g is not None:
            assert torch.equal(g, g2), f"{n}.grad changed"
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"]
