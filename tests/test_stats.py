"""The framework's typed statistics, estimators (with reduce= hooks), running EMA, partitions' views,
modulate, and the running-statistics base, against direct float64 computations."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import normlab
from normlab.functional import (
    BatchGroupPartition,
    BatchPartition,
    Covariance,
    GroupPartition,
    InstancePartition,
    LayerPartition,
    Moments,
    PositionalPartition,
    SampleGroupCoupled,
    Scale,
    Whitening,
    apply_whitening,
    estimate_covariance,
    estimate_moments,
    estimate_scale,
    masked_moments,
    modulate,
    track_batch,
    update_running,
    window_moments,
)
from normlab.nn.base import RunningStatsNorm

TOL = {"rtol": 1e-12, "atol": 1e-12}


def _randn(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------ Moments


def test_pool_equal_counts_equals_direct_estimate():
    x = _randn(5, 3, 7, seed=1) * 3 + 10
    pooled = estimate_moments(x, (2,)).pool(0)
    direct = estimate_moments(x, (0, 2))
    assert_close(pooled.mean, direct.mean, **TOL)
    assert_close(pooled.var, direct.var, **TOL)
    assert pooled.count == direct.count == 35


def test_pool_unequal_counts_weights_by_count():
    a, b = _randn(1, 4, 3, seed=2) + 5, _randn(1, 4, 11, seed=3) * 2 - 1
    m = Moments(
        torch.cat([a.mean(2, keepdim=True), b.mean(2, keepdim=True)]),
        torch.cat([a.var(2, keepdim=True, unbiased=False), b.var(2, keepdim=True, unbiased=False)]),
        torch.tensor([3.0, 11.0], dtype=torch.float64).view(2, 1, 1),
    )
    pooled = m.pool(0, keepdim=False)
    both = torch.cat([a, b], 2)
    assert_close(pooled.mean, both.mean(2, keepdim=True).squeeze(0), **TOL)
    assert_close(pooled.var, both.var(2, unbiased=False, keepdim=True).squeeze(0), **TOL)
    assert_close(pooled.count, torch.full((4, 1), 14.0, dtype=torch.float64))


def test_pool_has_no_raw_moment_cancellation():
    # mean/std = 1e4 in float32: E[x^2]-E[x]^2 has no correct digit (E[x^2] ~ 1e8, ulp 8).
    x = (torch.randn(8, 2, 64, generator=torch.Generator().manual_seed(0)) + 1e4).float()
    pooled = estimate_moments(x, (2,)).pool(0)
    want = x.double().var((0, 2), unbiased=False, keepdim=True)
    raw = (x.square().mean((0, 2), keepdim=True) - x.mean((0, 2), keepdim=True).square()).double()
    # float32 rounding of the per-row means (ulp(1e4)/2 ~ 5e-4 vs std 1) bounds the pooled error near 1e-4.
    assert_close(pooled.var.double(), want, rtol=1e-3, atol=0)
    assert ((raw - want).abs() / want).max() > 1e-2  # what the raw formula would give


def test_mix_separate_weights_and_validation():
    m = Moments(_randn(3, 4, seed=4), _randn(3, 4, seed=5).abs(), 10)
    a = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    b = torch.tensor([0.6, 0.1, 0.3], dtype=torch.float64)
    mixed = m.mix(a, 0, b)
    assert_close(mixed.mean, (a[:, None] * m.mean).sum(0), **TOL)
    assert_close(mixed.var, (b[:, None] * m.var).sum(0), **TOL)
    with pytest.raises(ValueError, match=r"expected var_weights of shape \(3,\), got \(2,\)"):
        m.mix(a, 0, b[:2])


def test_running_values_bessel_only_where_it_belongs():
    v = torch.tensor([2.0], dtype=torch.float64)
    assert_close(Moments(v, v, 5).running_values()[1], v * 5 / 4)
    cov = torch.eye(2, dtype=torch.float64)[None] * 2
    assert_close(Covariance(v, cov, 5).running_values()[1], cov * 5 / 4)
    wm = torch.eye(2, dtype=torch.float64)[None] * 3
    assert_close(Whitening(v, wm).running_values()[1], wm)  # a matrix, not a variance: no M/(M-1)
    assert_close(Scale(v, v, 5).running_values()[1], v)
    # count 1: no unbiased estimate exists; the factor is 1, never a division by zero
    assert_close(Moments(v, v, 1).unbiased_var(), v)


# ------------------------------------------------------- the reduce= hook


class _FakeProcesses:
    """Runs ``fn(rank)`` in ``world`` threads whose ``reduce`` sums their tensors, as all_reduce(SUM) does."""

    def __init__(self, world: int):
        self.world = world
        self.barrier = threading.Barrier(world)
        self.slots: list = [None] * world
        self.calls = [0] * world

    def reduce_for(self, rank: int):
        def reduce(t: torch.Tensor) -> torch.Tensor:
            self.calls[rank] += 1
            self.slots[rank] = t.clone()
            self.barrier.wait()
            total = sum(self.slots)
            self.barrier.wait()
            return total

        return reduce

    def run(self, fn):
        out: list = [None] * self.world
        errors: list = []

        def target(r):
            try:
                out[r] = fn(r, self.reduce_for(r))
            except BaseException as e:  # pragma: no cover - surfaced below
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        if errors:
            raise errors[0]
        return out


@pytest.mark.parametrize("sizes", [(4, 4, 4), (1, 6, 3), (5, 0, 2)])
def test_estimate_moments_with_reduce_equals_the_whole_batch(sizes):
    x = _randn(sum(sizes), 3, 5, seed=6) * 2 + 100
    parts = torch.split(x, list(sizes))
    procs = _FakeProcesses(len(sizes))
    got = procs.run(lambda r, red: estimate_moments(parts[r], (0, 2), reduce=red))
    want = estimate_moments(x, (0, 2))
    for m in got:
        assert_close(m.mean, want.mean, **TOL)
        assert_close(m.var, want.var, **TOL)
        assert float(m.count) == want.count
    assert procs.calls == [2] * len(sizes)  # [sum, count], then the centred squares


def test_estimate_covariance_with_reduce_equals_the_whole_batch():
    x = _randn(9, 2, 3, 5, seed=7)  # (N, G, d, S)
    parts = torch.split(x, [2, 3, 4])
    got = _FakeProcesses(3).run(lambda r, red: estimate_covariance(parts[r], 2, (0, 3), reduce=red))
    want = estimate_covariance(x, 2, (0, 3))
    for c in got:
        assert_close(c.mean, want.mean, **TOL)
        assert_close(c.cov, want.cov, **TOL)


def test_masked_moments_with_reduce_and_scale_with_reduce():
    x = _randn(6, 2, 4, 4, seed=8)
    mask = (torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1)) > 0.4).double()
    parts, masks = torch.split(x, [2, 4]), torch.split(mask, [2, 4])
    got = _FakeProcesses(2).run(lambda r, red: masked_moments(parts[r], masks[r], (0, 2, 3), reduce=red))
    want = masked_moments(x, mask, (0, 2, 3))
    for m in got:
        assert_close(m.mean, want.mean, **TOL)
        assert_close(m.var, want.var, **TOL)
    for norm in ("l1", "rms"):
        got = _FakeProcesses(2).run(lambda r, red, n=norm: estimate_scale(parts[r], (0, 2, 3), 1e-3, n, reduce=red))
        want = estimate_scale(x, (0, 2, 3), 1e-3, norm)
        assert_close(got[0].scale, want.scale, **TOL)
    with pytest.raises(ValueError, match="max"):
        estimate_scale(x, (0,), 0.0, "linf", reduce=lambda t: t)


def test_pool_with_reduce_pools_across_processes():
    x = _randn(9, 3, 5, seed=14) * 3 + 7
    parts = torch.split(x, [2, 3, 4])
    got = _FakeProcesses(3).run(lambda r, red: estimate_moments(parts[r], (2,)).pool(0, reduce=red))
    want = estimate_moments(x, (0, 2))
    for m in got:
        assert_close(m.mean, want.mean, **TOL)
        assert_close(m.var, want.var, **TOL)
        assert float(m.count.flatten()[0]) == want.count


# ----------------------------------------------------------- estimators


def test_estimate_covariance_equals_loop_over_groups():
    x = _randn(4, 3, 2, 6, seed=9) * 2 + 1  # (N, G, d, S)
    c = estimate_covariance(x, 2, (0, 3))
    assert c.mean.shape == (3, 2) and c.cov.shape == (3, 2, 2) and c.count == 24
    for g in range(3):
        xs = x[:, g].permute(1, 0, 2).reshape(2, -1)  # (d, M)
        xc = xs - xs.mean(1, keepdim=True)
        assert_close(c.cov[g], xc @ xc.T / xs.shape[1], **TOL)
        assert_close(c.mean[g], xs.mean(1), **TOL)
    with pytest.raises(ValueError, match="cannot also be a sample dim"):
        estimate_covariance(x, 2, (2, 3))


@pytest.mark.parametrize("shape", [(4, 3, 2, 6), (4, 3, 5, 2)], ids=["matmul-road-S>=D", "einsum-road-S<D"])
def test_apply_whitening_batched_equals_loop(shape):
    x = _randn(*shape, seed=10)
    c = estimate_covariance(x, 2, (0, 3))
    w = torch.linalg.inv(torch.linalg.cholesky(c.cov))  # some whitening matrix per group
    y = apply_whitening(x, Whitening(c.mean, w), feature_dim=2, sample_dims=(0, 3))
    d = shape[2]
    for g in range(3):
        want = torch.einsum("de,nes->nds", w[g], x[:, g] - c.mean[g][None, :, None])
        assert_close(y[:, g], want, **TOL)
    yc = estimate_covariance(y, 2, (0, 3)).cov
    assert_close(yc, torch.eye(d, dtype=torch.float64).expand(3, d, d), rtol=0, atol=1e-10)
    # a layout outside the (..., D, S) road (features last) goes through the general contraction
    yt = apply_whitening(x.movedim(2, 3), Whitening(c.mean, w), feature_dim=3, sample_dims=(0, 2))
    assert_close(yt.movedim(3, 2), y, **TOL)


def _brute_window(x, n, c, pos, window, cw):
    sl = [n, slice(max(c - (cw - 1) // 2, 0), min(c + cw // 2 + 1, x.shape[1]))]
    for p, w, size in zip(pos, window, x.shape[2:], strict=True):
        sl.append(slice(max(p - (w - 1) // 2, 0), min(p + w // 2 + 1, size)))
    v = x[tuple(sl)]
    return v.mean(), v.var(unbiased=False), v.numel()


@pytest.mark.parametrize(("window", "cw"), [((3, 3), 1), ((3, 2), 2), ((5, 5), 3), ((1, 1), 1)])
def test_window_moments_equal_brute_force_at_borders_and_inside(window, cw):
    x = _randn(2, 4, 5, 6, seed=11) * 2 + 50
    m = window_moments(x, window, channel_window=cw)
    for n, c, i, j in [(0, 0, 0, 0), (1, 3, 4, 5), (0, 2, 2, 3), (1, 1, 0, 5), (0, 3, 0, 2)]:
        mean, var, count = _brute_window(x, n, c, (i, j), window, cw)
        assert_close(m.mean[n, c, i, j], mean, **TOL)
        assert_close(m.var[n, c, i, j], var, rtol=1e-9, atol=1e-9)
        assert float(m.count[0, c, i, j]) == count


def test_window_moments_rejects_bad_windows_and_reduce():
    x = _randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match="2 positive spatial window sizes"):
        window_moments(x, (3,))
    with pytest.raises(ValueError, match="reduce must be None"):
        window_moments(x, (3, 3), reduce=lambda t: t)


def test_masked_moments_equal_selected_values():
    x = _randn(3, 2, 4, 4, seed=12)
    mask = torch.zeros(3, 1, 4, 4, dtype=torch.float64)
    mask[:, :, 1:3, :] = 1
    m = masked_moments(x, mask, (0, 2, 3))
    sel = x[:, :, 1:3, :]
    assert_close(m.mean.flatten(), sel.mean((0, 2, 3)), **TOL)
    assert_close(m.var.flatten(), sel.var((0, 2, 3), unbiased=False), **TOL)


# --------------------------------------------------------- running EMA


def test_update_running_per_type_and_cumulative_average():
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    batches = [Moments(_randn(3, seed=s), _randn(3, seed=s + 10).abs(), 4) for s in range(5)]
    nbt = torch.tensor(0)
    for b in batches:
        track_batch((rm, rv), nbt, b, None)
    assert int(nbt) == 5
    assert_close(rm, torch.stack([b.mean for b in batches]).mean(0), **TOL)
    assert_close(rv, torch.stack([b.var * 4 / 3 for b in batches]).mean(0), **TOL)

    wm = torch.eye(2, dtype=torch.float64).repeat(3, 1, 1)
    new = 2 * torch.eye(2, dtype=torch.float64).repeat(3, 1, 1)
    update_running((None, wm), Whitening(torch.zeros(3, 2, dtype=torch.float64), new), 0.25)
    assert_close(wm, 1.25 * torch.eye(2, dtype=torch.float64).repeat(3, 1, 1), **TOL)

    with pytest.raises(ValueError, match="cannot update a running buffer of shape"):
        update_running((torch.zeros(4), None), Moments(torch.zeros(3), torch.ones(3), 2), 0.1)
    with pytest.raises(ValueError, match="has 2 running values, got 1"):
        update_running((torch.zeros(3),), Moments(torch.zeros(3), torch.ones(3), 2), 0.1)


# ------------------------------------------------------------ partitions

_PARTITIONS = [
    BatchPartition(),
    BatchPartition(coupled=2),
    LayerPartition(),
    InstancePartition(),
    GroupPartition(3),
    BatchGroupPartition(2),
    PositionalPartition(),
    SampleGroupCoupled(3),
]


@pytest.mark.parametrize("part", _PARTITIONS, ids=lambda p: repr(p))
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_partition_view_is_no_copy_and_moments_match_the_grouped_road(part, fmt):
    x = (_randn(4, 6, 3, 5, seed=13) * 2 + 3).contiguous(memory_format=fmt)
    v = part.view(x)
    assert v.data_ptr() == x.data_ptr() and v._base is not None, "view(x) must not copy"
    m = part.moments(x)
    g = part.group(x)
    var, mean = torch.var_mean(g, -1, correction=0)
    assert_close(m.mean.flatten().sort().values, mean.flatten().sort().values, **TOL)
    assert_close(m.var.flatten().sort().values, var.flatten().sort().values, **TOL)
    if part.feature_dim is not None:
        c = part.covariance(x)
        gc = g - g.mean(-1, keepdim=True)
        want = gc @ gc.transpose(1, 2) / g.shape[-1]
        got = c.cov.reshape(want.shape) if c.cov.dim() == 3 else c.cov.reshape(-1, *want.shape[1:])
        assert_close(got, want, **TOL)
    y, _ = part.standardize(x, 1e-5)
    assert y.shape == x.shape


# -------------------------------------------------------------- modulate


def test_modulate_shapes_and_refusals():
    y = _randn(2, 3, 4, 5)
    s, b = _randn(2, 3, seed=1), _randn(3, seed=2)
    assert_close(modulate(y, s, b), y * s[:, :, None, None] + b[None, :, None, None], **TOL)
    pos = _randn(2, 3, 4, 5, seed=3)
    assert_close(modulate(y, 1 + pos, pos), y * (1 + pos) + pos, **TOL)
    assert_close(modulate(y, _randn(2, 3, 1, 1, seed=4)), y * _randn(2, 3, 1, 1, seed=4), **TOL)
    for bad in [_randn(3, 1), _randn(2, 3, 2, 5), _randn(1, 3, 4, 5), _randn(6)]:
        with pytest.raises(ValueError, match=r"modulate expected scale of shape \(C,\)"):
            modulate(y, bad)


# ----------------------------------------------------- the running-stats base


class _Toy(RunningStatsNorm):
    """A minimal batch-statistics norm on the base (BN through the framework)."""

    def forward(self, input):
        dims = (0, *range(2, input.dim()))
        if self.use_batch_stats():
            stats = estimate_moments(input, dims)
            y = normlab.functional.apply_moments(input, stats, self.eps)
            self.update_running(stats)
        else:
            view = [1, -1] + [1] * (input.dim() - 2)
            y = normlab.functional.apply_moments(
                input, (self.running_mean.view(view), self.running_var.view(view)), self.eps
            )
        return normlab.functional.channel_affine(y, self.weight, self.bias).to(input.dtype)


def test_base_matches_torch_batchnorm_contract():
    toy, bn = _Toy(3).double(), nn.BatchNorm2d(3).double()
    assert not isinstance(toy, nn.modules.batchnorm._BatchNorm)
    assert toy.state_dict().keys() == bn.state_dict().keys()
    x = _randn(4, 3, 5, 5)
    assert_close(toy(x), bn(x), **TOL)
    assert_close(toy.running_var, bn.running_var, **TOL)
    toy.eval(), bn.eval()
    assert_close(toy(x), bn(x), **TOL)
    bn.load_state_dict(toy.state_dict(), strict=True)
    toy.load_state_dict(bn.state_dict(), strict=True)
    assert repr(toy) == "_Toy(3, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"
    # convert_sync_batchnorm looks for _BatchNorm: it must leave the toy alone, not replace it
    assert type(nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(toy))[0]) is _Toy
    assert normlab.statistics_kind(toy) == "batch" and normlab.mode_dependent(toy)


def test_base_loads_old_checkpoints_without_num_batches_tracked():
    old = _Toy(3).state_dict()
    del old["num_batches_tracked"]
    old._metadata[""]["version"] = 1  # saved before num_batches_tracked existed
    toy = _Toy(3)
    toy.num_batches_tracked.fill_(7)
    toy.load_state_dict(old, strict=True)  # as torch's _NormBase: the missing counter is filled in
    new = _Toy(3).state_dict()
    del new["num_batches_tracked"]
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        _Toy(3).load_state_dict(new, strict=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": -1.0}, "eps must be a finite number >= 0"),
        ({"eps": float("nan")}, "eps must be a finite number >= 0"),
        ({"momentum": 1.5}, r"momentum must be in \[0, 1\]"),
        ({"momentum": float("nan")}, r"momentum must be in \[0, 1\]"),
        ({"num_features": 0}, "num_features must be a positive int, got 0"),
        ({"num_features": 3.0}, "num_features must be an int, got the float 3.0"),
    ],
)
def test_base_validates_construction(kwargs, match):
    args = {"num_features": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        _Toy(**args)


def test_base_no_tracking_and_reset():
    toy = _Toy(2, track_running_stats=False)
    assert toy.running_mean is None and toy.num_batches_tracked is None
    toy.eval()
    assert toy.use_batch_stats()
    toy = _Toy(2)
    toy(_randn(3, 2, 4))
    toy.reset_running_stats()
    assert int(toy.num_batches_tracked) == 0 and bool((toy.running_var == 1).all())
