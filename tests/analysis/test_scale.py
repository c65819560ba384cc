"""Scale invariance, effective learning rate and angular updates."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from normlab.analysis import EffectiveLRTracker, ScaleInvarianceResult, plot_effective_lr, scale_invariance

from ._model_state import assert_unchanged, snapshot

f64 = torch.float64


def _bn_model(eps=1e-5):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8, eps=eps), nn.ReLU(), nn.Linear(8, 3)).double()


def test_weight_before_batchnorm_is_scale_invariant():
    model = _bn_model(eps=1e-12)
    x = torch.randn(32, 6, dtype=f64)
    before = snapshot(model)
    r = scale_invariance(model, model[0].weight, x, cs=(0.1, 10.0, 1000.0), bn_mode="train")
    assert_unchanged(model, before)
    assert isinstance(r, ScaleInvarianceResult) and r.param == "0.weight"
    assert float(r.output_change.max()) < 1e-9
    torch.testing.assert_close(r.grad_ratio, torch.ones(3, dtype=f64), rtol=0, atol=1e-8)
    torch.testing.assert_close(r.grad_cosine, torch.ones(3, dtype=f64), rtol=0, atol=1e-8)
    assert r.is_invariant()
    # With torch's default eps=1e-5 the invariance holds up to about eps / (2 var), var ~ 0.3 here.
    r5 = scale_invariance(_bn_model(), "0.weight", x, cs=(10.0, 1000.0), bn_mode="train")
    assert float(r5.output_change.max()) < 1e-4


def test_weight_without_normalization_is_not_invariant():
    model = _bn_model()
    x = torch.randn(32, 6, dtype=f64)
    r = scale_invariance(model, "3.weight", x, cs=(0.1, 10.0), bn_mode="train")
    assert float(r.output_change.min()) > 0.5
    assert not r.is_invariant()
    # A bias-free linear map: f(cw) = c f(w) and the gradient of sum(f * r) does not depend on w.
    lin = nn.Linear(6, 3, bias=False).double()
    r = scale_invariance(lin, "weight", x, cs=(0.5, 3.0, 100.0), bn_mode="train")
    torch.testing.assert_close(r.output_change, torch.tensor([0.5, 2.0, 99.0], dtype=f64), rtol=1e-12, atol=0)
    torch.testing.assert_close(r.grad_ratio, torch.tensor([0.5, 3.0, 100.0], dtype=f64), rtol=1e-12, atol=0)


def test_eval_mode_breaks_invariance_and_loss_pairs():
    model = _bn_model()
    x = torch.randn(32, 6, dtype=f64)
    t = torch.randint(0, 3, (32,))
    r = scale_invariance(model, "0.weight", (x, t), cs=(10.0,), loss_fn=F.cross_entropy, bn_mode="train")
    assert float(r.output_change[0]) < 1e-4 and abs(float(r.grad_ratio[0]) - 1) < 1e-3
    r_eval = scale_invariance(model, "0.weight", x, cs=(10.0,), bn_mode="eval")
    assert float(r_eval.output_change[0]) > 0.5
    r_fn = scale_invariance(model, "0.weight", x, cs=(10.0,), loss_fn=lambda y: y.pow(2).sum(), bn_mode="train")
    assert float(r_fn.output_change[0]) < 1e-4


def test_param_restored_bitwise_even_on_error():
    model = _bn_model()
    w = model[0].weight.detach().clone()
    with pytest.raises(ValueError, match="scalar"):
        scale_invariance(model, "0.weight", torch.randn(8, 6, dtype=f64), loss_fn=lambda y: y, bn_mode="train")
    assert torch.equal(model[0].weight, w)


def test_tracker_hand_made_sequence():
    w = nn.Parameter(torch.tensor([3.0, 4.0], dtype=f64))
    tr = EffectiveLRTracker([w], lr=0.5)
    seq = [
        torch.tensor([4.0, 3.0], dtype=f64),
        torch.tensor([0.0, 10.0], dtype=f64),
        torch.tensor([0.0, -1.0], dtype=f64),
    ]
    for v in seq:
        with torch.no_grad():
            w.copy_(v)
        tr.update()
    d = tr.as_dict()["param0"]
    assert d["step"] == [0, 1, 2]
    assert d["norm"] == pytest.approx([5.0, 5.0, 10.0], rel=1e-15)
    assert d["next_norm"] == pytest.approx([5.0, 10.0, 1.0], rel=1e-15)
    assert d["effective_lr"] == pytest.approx([0.5 / 25, 0.5 / 25, 0.5 / 100], rel=1e-15)
    want = [math.acos(24 / 25), math.acos(3 / 5), math.pi]
    assert d["angle"] == pytest.approx(want, rel=1e-13)
    assert d["lr"] == [0.5, 0.5, 0.5]


def test_tiny_angles_are_resolved():
    theta = 1e-9
    w = nn.Parameter(torch.tensor([1.0, 0.0], dtype=f64))
    tr = EffectiveLRTracker({"w": w}, lr=1.0)
    with torch.no_grad():
        w.copy_(torch.tensor([2.0, 2.0 * math.tan(theta)], dtype=f64))
    (rec,) = tr.update()
    assert rec.angle == pytest.approx(theta, rel=1e-12)  # arccos(cos) would read 0 here
    assert math.acos(min(1.0, math.cos(theta))) == 0.0  # what arccos of the cosine reads


def test_tracker_with_optimizer_and_scale_invariant_weight():
    model = _bn_model(eps=1e-12)
    x, t = torch.randn(32, 6, dtype=f64), torch.randint(0, 3, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    tr = EffectiveLRTracker([("0.weight", model[0].weight)], lr=opt)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), t).backward()
        gnorm = float(model[0].weight.grad.norm())
        opt.step()
        (rec,) = tr.update()
        sched.step()
        # The gradient of a scale-invariant weight is orthogonal to it: ||w'||^2 = ||w||^2 + lr^2 ||g||^2,
        # and the angle is atan(lr ||g|| / ||w||).
        assert rec.next_norm**2 == pytest.approx(rec.norm**2 + rec.lr**2 * gnorm**2, rel=1e-10)
        assert rec.angle == pytest.approx(math.atan(rec.lr * gnorm / rec.norm), rel=1e-7)
    assert [r.lr for r in tr.records] == pytest.approx([0.2, 0.1, 0.05])


def test_bad_inputs():
    model = _bn_model()
    x = torch.randn(8, 6, dtype=f64)
    with pytest.raises(ValueError, match="cs"):
        scale_invariance(model, "0.weight", x, cs=(0.0, 2.0), bn_mode="train")
    with pytest.raises(ValueError, match="cs"):
        scale_invariance(model, "0.weight", x, cs=(), bn_mode="train")
    with pytest.raises(ValueError, match="no parameter named"):
        scale_invariance(model, "0.w", x, bn_mode="train")
    with pytest.raises(ValueError, match="not a parameter of the model"):
        scale_invariance(model, nn.Parameter(torch.ones(2)), x, bn_mode="train")
    with pytest.raises(TypeError, match="param"):
        scale_invariance(model, 0, x, bn_mode="train")
    with pytest.raises(TypeError, match="x must be"):
        scale_invariance(model, "0.weight", [1.0, 2.0, 3.0], bn_mode="train")
    with pytest.raises(TypeError, match="model"):
        scale_invariance("model", "0.weight", x, bn_mode="train")
    w = nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="lr"):
        EffectiveLRTracker([w], lr=-1.0)
    with pytest.raises(ValueError, match="empty"):
        EffectiveLRTracker([], lr=0.1)
    with pytest.raises(TypeError, match="params"):
        EffectiveLRTracker(w, lr=0.1)
    with pytest.raises(ValueError, match="does not update"):
        EffectiveLRTracker([w], lr=torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1))
    with pytest.raises(ValueError, match="duplicate"):
        EffectiveLRTracker([("a", w), ("a", w)], lr=0.1)
    with pytest.raises(TypeError):
        plot_effective_lr([1])


def test_plot_effective_lr():
    w = nn.Parameter(torch.randn(10))
    v = nn.Parameter(torch.randn(4))
    tr = EffectiveLRTracker([("w", w), ("v", v)], lr=0.1)
    for _ in range(4):
        with torch.no_grad():
            w.add_(0.1 * torch.randn(10))
            v.mul_(1.1)  # a pure rescaling: angle 0 (log scale is skipped)
        tr.update()
    fig = plot_effective_lr(tr)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
