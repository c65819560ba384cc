"""SND: the formula by hand, BatchNorm's m^(-1/2) law, zero for per-sample norms."""

from __future__ import annotations

import math

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

import normlab
from normlab.analysis import SNDResult, SNDSweep, plot_snd, snd, snd_sweep

from ._model_state import assert_unchanged, snapshot


def _gaussian(n=4096, d=16, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_formula_by_hand():
    data = _gaussian(200, 5, seed=1)
    x, pool = data[0], data[1:]
    m, s = 8, 6
    bn = nn.BatchNorm1d(5, affine=False, eps=1e-3).double()
    res = snd(bn, x.double(), pool.double(), m, s, generator=torch.Generator().manual_seed(3))
    assert isinstance(res, SNDResult) and res.batch_size == m and res.num_batches == s
    # Replay the draws with the same seed and normalize by the formula.
    g = torch.Generator().manual_seed(3)
    outs = []
    for _ in range(s):
        comp = pool[torch.randperm(pool.shape[0], generator=g)[: m - 1]]
        b = torch.cat([x[None], comp]).double()
        outs.append(((b - b.mean(0)) / (b.var(0, unbiased=False) + 1e-3).sqrt())[0])
    Y = torch.stack(outs)
    dist = (Y - Y.mean(0)).norm(dim=1)
    torch.testing.assert_close(res.distances, dist, rtol=1e-12, atol=1e-14)
    assert res.value == pytest.approx(float(dist.mean()), rel=1e-12)
    per_el = snd(bn, x.double(), pool.double(), m, s, generator=3, per_element=True)
    assert per_el.value == pytest.approx(res.value / math.sqrt(5), rel=1e-12)
    assert res.stderr > 0


def test_batchnorm_snd_falls_like_inverse_sqrt_m():
    data = _gaussian(8192, 16)
    sweep = snd_sweep(
        lambda _: nn.BatchNorm1d(16), data, [16, 32, 64, 128, 256], num_batches=32, num_samples=4, generator=0
    )
    assert isinstance(sweep, SNDSweep) and sweep.snd.shape == (1, 5)
    assert bool((sweep.snd[0, 1:] < sweep.snd[0, :-1]).all())
    assert -0.6 <= sweep.slope() <= -0.4


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: nn.LayerNorm(16), (16,)),
        (lambda: normlab.nn.LayerNorm(16), (16,)),
        (lambda: nn.GroupNorm(4, 8), (8, 3, 3)),
        (lambda: normlab.nn.GroupNorm(4, 8), (8, 3, 3)),
        (lambda: normlab.nn.InstanceNorm2d(8), (8, 3, 3)),
    ],
)
def test_per_sample_norms_have_zero_snd(make, shape):
    data = torch.randn(300, *shape, generator=torch.Generator().manual_seed(2))
    res = snd(make(), data[0], data[1:], batch_size=16, num_batches=20, generator=0)
    assert res.value == 0.0 and bool((res.distances == 0).all())


def test_group_sweep_and_sampler():
    data = torch.randn(600, 8, 2, 2, generator=torch.Generator().manual_seed(3))
    sweep = snd_sweep(
        lambda g: nn.GroupNorm(8 // g, 8), data, [4, 16], group_sizes=[1, 4], num_batches=8, num_samples=2, generator=1
    )
    assert sweep.group_sizes == [1, 4] and torch.equal(sweep.snd, torch.zeros(2, 2, dtype=torch.float64))
    # A sampler instead of a pool.
    calls = []

    def sampler(n, gen):
        calls.append(n)
        return torch.randn(n, 8, 2, 2, generator=gen)

    r = snd(nn.BatchNorm2d(8), data[0], sampler, batch_size=5, num_batches=4, generator=0)
    assert r.value > 0 and calls.count(4) == 4
    # (inputs, targets) works as a pool; x may carry a batch dim of 1.
    r2 = snd(nn.BatchNorm2d(8), data[:1], (data[1:], torch.zeros(599)), batch_size=5, num_batches=4, generator=0)
    assert r2.value > 0


def test_module_state_restored():
    bn = nn.BatchNorm1d(16)
    with torch.no_grad():
        bn.running_mean.fill_(0.3)
    bn.eval()
    before = snapshot(bn)
    data = _gaussian(300)
    snd(bn, data[0], data[1:], 8, 5, generator=0)
    assert_unchanged(bn, before)
    bn.train()
    before = snapshot(bn)
    snd_sweep(lambda _: bn, data, [4, 8], num_batches=3, num_samples=2, generator=0)
    assert_unchanged(bn, before)


def test_seeded_is_reproducible():
    data = _gaussian(500)
    a = snd(nn.BatchNorm1d(16), data[0], data[1:], 8, 10, generator=5)
    b = snd(nn.BatchNorm1d(16), data[0], data[1:], 8, 10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.distances, b.distances)


def test_bad_inputs():
    data = _gaussian(50, 4)
    bn = nn.BatchNorm1d(4)
    with pytest.raises(ValueError, match="companions"):
        snd(bn, data[0], data[1:], batch_size=60)
    with pytest.raises(ValueError, match="x must be one example"):
        snd(bn, data[:2], data[2:], batch_size=4)
    with pytest.raises(ValueError, match="num_batches"):
        snd(bn, data[0], data[1:], batch_size=4, num_batches=1)
    with pytest.raises(ValueError, match="batch_size"):
        snd(bn, data[0], data[1:], batch_size=0)
    with pytest.raises(TypeError, match="norm_module"):
        snd(lambda t: t, data[0], data[1:], batch_size=4)
    with pytest.raises(TypeError, match="data"):
        snd(bn, data[0], [1, 2, 3], batch_size=4)
    with pytest.raises(TypeError, match="generator"):
        snd(bn, data[0], data[1:], batch_size=4, generator="seed")
    with pytest.raises(ValueError, match="too few"):
        snd_sweep(lambda _: bn, data, [64])
    with pytest.raises(ValueError, match="group_sizes"):
        snd_sweep(lambda _: bn, data, [4], group_sizes=[])
    with pytest.raises(TypeError, match="factory"):
        snd_sweep(lambda _: "bn", data, [4])
    with pytest.raises(TypeError):
        plot_snd({"snd": 1})


def test_plot_snd():
    data = _gaussian(400)
    sweep = snd_sweep(lambda _: nn.BatchNorm1d(16), data, [4, 16, 64], num_batches=4, num_samples=2, generator=0)
    assert isinstance(plot_snd(sweep), Figure)
    zero = snd_sweep(lambda _: nn.LayerNorm(16), data, [4, 16], num_batches=3, num_samples=2, generator=0)
    assert isinstance(plot_snd(zero, reference_slope=None), Figure)
