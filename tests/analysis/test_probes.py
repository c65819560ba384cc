"""Probes: recorded statistics equal direct computations; hooks come off cleanly."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from normlab.analysis import ActivationProbe, ProbeRecord, plot_probes

from ._model_state import assert_unchanged, snapshot

f64 = torch.float64


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double()


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(11, 5, generator=g, dtype=f64), torch.randint(0, 3, (11,), generator=g)


def test_records_match_direct_computation():
    model = _model()
    x, t = _data()
    with ActivationProbe(model) as probe:
        assert probe.step(0)
        loss = F.cross_entropy(model(x), t)
        loss.backward()
    recs = {r.layer: r for r in probe.records}
    assert set(recs) == {"0", "1", "2"}

    # Direct: the same forward by hand, gradients of the loss w.r.t. each output.
    h0 = F.linear(x, model[0].weight, model[0].bias)
    h1 = torch.relu(h0)
    h2 = F.linear(h1, model[2].weight, model[2].bias)
    grads = torch.autograd.grad(F.cross_entropy(h2, t), [h0, h1, h2])
    for name, h, g in zip(("0", "1", "2"), (h0, h1, h2), grads, strict=True):
        r, h = recs[name], h.detach()
        assert r.step == 0 and r.call == 0 and r.numel == h.numel()
        assert r.norm == pytest.approx(float(h.norm()), rel=1e-12)
        assert r.mean == pytest.approx(float(h.mean()), rel=1e-12)
        assert r.var == pytest.approx(float(h.var(unbiased=False)), rel=1e-12)
        assert r.grad_norm == pytest.approx(float(g.norm()), rel=1e-12)
        assert all(isinstance(getattr(r, k), float) for k in ("norm", "mean", "var", "grad_norm"))


def test_inplace_activation_after_layer_sees_own_output_gradient():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 2)).double()
    x = torch.randn(9, 4, dtype=f64)
    with ActivationProbe(model, layers=["0"]) as probe:
        h0 = model[0](x)
        pre = h0.detach().clone()
        model[2](model[1](h0)).pow(2).sum().backward()
    r = probe.records[0]
    y = pre.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model[2](torch.relu(y)).pow(2).sum(), y)
    assert r.norm == pytest.approx(float(pre.norm()), rel=1e-12)
    assert r.grad_norm == pytest.approx(float(g.norm()), rel=1e-12)


def test_step_selection_and_calls():
    model = _model()
    x, t = _data()
    for steps, want in [({1, 3}, [1, 3]), (lambda s: s % 2 == 0, [0, 2, 4]), (None, [0, 1, 2, 3, 4]), ([], [])]:
        with ActivationProbe(model, layers=nn.Linear, steps=steps) as probe:
            for i in range(5):
                probe.step(i)
                F.cross_entropy(model(x), t).backward()
        got = sorted({r.step for r in probe.records})
        assert got == want
        assert all(not math.isnan(r.grad_norm) for r in probe.records)
    model.zero_grad()
    # step() without an argument counts up; two calls of a layer in one step are two records.
    with ActivationProbe(model, layers=["0"]) as probe:
        assert probe.current_step == 0
        model(x)
        model(x)
        probe.step()
        model(x)
    assert [(r.step, r.call) for r in probe.records] == [(0, 0), (0, 1), (1, 0)]
    d = probe.as_dict()
    assert list(d) == ["0"] and d["0"]["step"] == [0, 0, 1] and len(d["0"]["norm"]) == 3


def test_no_grad_forward_has_nan_grad_norm():
    model = _model()
    with ActivationProbe(model) as probe, torch.no_grad():
        model(_data()[0])
    assert all(math.isnan(r.grad_norm) and r.norm > 0 for r in probe.records)


def test_remove_restores_model_and_outputs():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    x = torch.randn(6, 2, 6, 6)
    before = snapshot(model)
    model.eval()
    with torch.no_grad():
        ref = model(x)
    probe = ActivationProbe(model)
    assert any(len(m._forward_hooks) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), ref)  # hooks never change outputs
    probe.remove()
    probe.remove()  # idempotent
    assert not probe.attached
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
        assert not m._backward_hooks and not m._backward_pre_hooks
    with torch.no_grad():
        assert torch.equal(model(x), ref)
    model.train()
    assert_unchanged(model, before)
    n = len(probe.records)
    model(x)
    assert len(probe.records) == n  # nothing recorded after removal


def test_gradients_identical_with_probe():
    model = _model()
    x, t = _data()
    F.cross_entropy(model(x), t).backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with ActivationProbe(model):
        F.cross_entropy(model(x), t).backward()
    for p, g in zip(model.parameters(), ref, strict=True):
        assert torch.equal(p.grad, g)


def test_no_graph_kept_alive():
    model = _model()
    x, t = _data()
    with ActivationProbe(model) as probe:
        out = model(x)
        ref = weakref.ref(out)
        loss = F.cross_entropy(out, t)
        loss.backward()
        del out, loss
        gc.collect()
        assert ref() is None
        # A recorded forward that never gets a backward does not pin its graph either.
        out = model(x)
        ref = weakref.ref(out)
        del out
        gc.collect()
        assert ref() is None
    assert all(isinstance(r, ProbeRecord) for r in probe.records)


def test_low_precision_model():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).to(torch.bfloat16)
    with ActivationProbe(model) as probe:
        model(torch.randn(16, 4, dtype=torch.bfloat16)).float().sum().backward()
    assert all(math.isfinite(r.norm) and math.isfinite(r.grad_norm) for r in probe.records)


def test_bad_inputs():
    model = _model()
    with pytest.raises(TypeError, match="steps"):
        ActivationProbe(model, steps="every")
    with pytest.raises(TypeError, match="ints"):
        ActivationProbe(model, steps=[1.5])
    with pytest.raises(ValueError, match="no submodule named"):
        ActivationProbe(model, layers=["fc"])
    with pytest.raises(ValueError, match="not a submodule"):
        ActivationProbe(model, layers=[nn.Linear(2, 2)])
    with pytest.raises(TypeError, match="model"):
        ActivationProbe("model")
    with ActivationProbe(model) as probe, pytest.raises(TypeError, match="int"):
        probe.step(1.0)
    with pytest.raises(ValueError, match="statistic"):
        plot_probes(probe, stats=("kurtosis",))
    with pytest.raises(TypeError):
        plot_probes([1, 2])


def test_plot_probes():
    model = _model()
    x, t = _data()
    with ActivationProbe(model) as probe:
        for i in range(3):
            probe.step(i)
            F.cross_entropy(model(x), t).backward()
    fig = plot_probes(probe)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert isinstance(plot_probes(probe.records, stats=("mean",)), Figure)
