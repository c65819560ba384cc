"""Property tests from the math: partitions, operations, recoveries, statistics, invariances."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import normlab
from normlab.functional import (
    BatchGroupPartition,
    BatchPartition,
    GroupPartition,
    InstancePartition,
    LayerPartition,
    PositionalPartition,
    SampleGroupCoupled,
    apply_stats,
    center,
    channel_affine,
    element_affine,
    linf_constant,
    moments,
    momentum_factor,
    rms_scale,
    standardize,
    update_running_stats,
)
from normlab.functional import generic as G

TOL64 = {"rtol": 1e-10, "atol": 1e-10}
N, C, H, W = 2, 6, 3, 4
S = H * W


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ------------------------------------------------------------------ partitions

# (partition, expected (R, D, M) for input (N, C, H, W), the elements group r
# must hold, as a function of x -> (R, D, M) built independently by indexing).
PARTITIONS = {
    "batch": (BatchPartition(), (C, 1, N * S)),
    "batch-coupled2": (BatchPartition(coupled=2), (C // 2, 2, N * S)),
    "batch-coupled3": (BatchPartition(coupled=3), (C // 3, 3, N * S)),
    "layer": (LayerPartition(), (N, 1, C * S)),
    "instance": (InstancePartition(), (N * C, 1, S)),
    "group3": (GroupPartition(3), (N * 3, 1, (C // 3) * S)),
    "batchgroup2": (BatchGroupPartition(2), (2, 1, N * (C // 2) * S)),
    "positional": (PositionalPartition(), (N * S, 1, C)),
    "samplegroupcoupled3": (SampleGroupCoupled(3), (N, 3, (C // 3) * S)),
}


def _expected_groups(name: str, x: torch.Tensor) -> torch.Tensor:
    """Each partition's (R, D, M) by explicit loops over which elements share statistics."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)  # (N, C, S)
    if name.startswith("batch-coupled") or name == "batch":
        d = 1 if name == "batch" else int(name[-1])
        rows = []
        for r in range(c // d):
            feats = [torch.cat([flat[i, r * d + j] for i in range(n)]) for j in range(d)]
            rows.append(torch.stack(feats))
        return torch.stack(rows)
    if name == "layer":
        return torch.stack([flat[i].reshape(1, -1) for i in range(n)])
    if name == "instance":
        return torch.stack([flat[i, j].reshape(1, -1) for i in range(n) for j in range(c)])
    if name == "group3":
        g = 3
        k = c // g
        return torch.stack([flat[i, q * k : (q + 1) * k].reshape(1, -1) for i in range(n) for q in range(g)])
    if name == "batchgroup2":
        g = 2
        k = c // g
        return torch.stack(
            [torch.cat([flat[i, q * k : (q + 1) * k].reshape(-1) for i in range(n)]).reshape(1, -1) for q in range(g)]
        )
    if name == "positional":
        return torch.stack([flat[i, :, s].reshape(1, -1) for i in range(n) for s in range(flat.shape[2])])
    if name == "samplegroupcoupled3":
        g = 3
        k = c // g
        return torch.stack(
            [torch.stack([flat[i, q * k : (q + 1) * k].reshape(-1) for q in range(g)]) for i in range(n)]
        )
    raise AssertionError(name)


@pytest.mark.parametrize("name", list(PARTITIONS))
def test_partition_shape_contents_and_exact_round_trip(name):
    partition, rdm = PARTITIONS[name]
    x = _randn(N, C, H, W, seed=1)
    g = partition.group(x)
    assert tuple(g.shape) == rdm
    assert torch.equal(g, _expected_groups(name, x))
    assert torch.equal(partition.ungroup(g, tuple(x.shape)), x)
    # ungroup is the inverse on any grouped tensor too (a bijection of positions).
    h = _randn(*rdm, seed=2)
    assert torch.equal(partition.group(partition.ungroup(h, tuple(x.shape))), h)


@pytest.mark.parametrize("name", list(PARTITIONS))
@pytest.mark.parametrize("shape", [(3, 6), (2, 6, 5), (2, 6, 2, 1, 3)], ids=["2d", "3d", "5d"])
def test_partition_round_trip_other_ranks(name, shape):
    partition, _ = PARTITIONS[name]
    x = _randn(*shape, seed=3)
    assert torch.equal(partition.ungroup(partition.group(x), shape), x)


def test_partition_rejects_indivisible_groups():
    x = _randn(2, 6, 2, 2)
    with pytest.raises(ValueError, match=r"num_channels \(6\) must be divisible by num_groups \(4\)"):
        GroupPartition(4).group(x)
    with pytest.raises(ValueError, match=r"divisible by the coupled group size \(4\)"):
        BatchPartition(coupled=4).group(x)


# ------------------------------------------------------------------ operations


@pytest.mark.parametrize("name", list(PARTITIONS))
def test_standardize_eps0_gives_mean0_var1_per_group(name):
    partition, _ = PARTITIONS[name]
    x = _randn(N, C, H, W, seed=4) * 3 + 2
    y = partition.ungroup(standardize(partition.group(x), 0.0).output, tuple(x.shape))
    # Check on the expected grouping, built independently of the partition.
    groups = _expected_groups(name, y)
    var, mean = torch.var_mean(groups, dim=-1, correction=0)
    assert_close(mean, torch.zeros_like(mean), atol=1e-12, rtol=0)
    assert_close(var, torch.ones_like(var), atol=1e-12, rtol=0)


def test_standardize_statistics_and_center():
    g = _randn(4, 2, 30, seed=5) * 2 + 1
    res = standardize(g, 1e-3)
    var, mean = torch.var_mean(g, dim=-1, correction=0, keepdim=True)
    assert_close(res.mean, mean, **TOL64)
    assert_close(res.var, var, **TOL64)
    assert isinstance(res.stats, normlab.functional.Moments) and res.stats.count == 30
    assert res.scale is None  # L2: the divisor sqrt(var + eps) is derived from Moments, not stored
    assert_close(res.output, (g - mean) / torch.sqrt(var + 1e-3), **TOL64)
    c = center(g)
    assert_close(c.output.mean(-1), torch.zeros(4, 2, dtype=torch.float64), atol=1e-12, rtol=0)
    assert_close(c.output, g - mean, **TOL64)


def test_l1_scale_estimates_sigma_on_gaussians():
    sigma = 3.0
    g = _randn(4, 1, 200_000, seed=6) * sigma + 5.0
    res = standardize(g, 0.0, "l1")
    # E|x - mu| = sigma sqrt(2/pi); the estimate's relative sd is ~0.0017 here.
    assert_close(res.scale / sigma, torch.ones_like(res.scale), rtol=0, atol=0.01)
    assert_close(
        res.scale, math.sqrt(math.pi / 2) * (g - g.mean(-1, keepdim=True)).abs().mean(-1, keepdim=True), **TOL64
    )


def test_linf_constant_formula_and_use():
    for n in (2, 10, 1000):
        assert linf_constant(n) == pytest.approx(
            0.5 * (1 + math.sqrt(math.pi * math.log(4))) / math.sqrt(2 * math.log(n)), rel=1e-15
        )
    with pytest.raises(ValueError, match="at least 2 values"):
        linf_constant(1)
    g = _randn(3, 2, 500, seed=7) * 2 - 1
    res = standardize(g, 1e-3, "linf")
    dev = g - g.mean(-1, keepdim=True)
    scale = linf_constant(500) * dev.abs().amax(-1, keepdim=True) + 1e-3
    assert_close(res.scale, scale, **TOL64)
    assert_close(res.output, dev / scale, **TOL64)


@pytest.mark.parametrize("n", [100, 1000, 10_000])
def test_linf_output_std_on_gaussians(n):
    """SPECS.md ("L1 / L-inf BN"): with C(n) = 0.5(1+sqrt(pi ln 4))/sqrt(2 ln n) and k=1 the
    L-inf output std on Gaussian data is ~0.67-0.75, not 1 (C(n) * max|x - mu| ~ 1.4 sigma)."""
    sigma = 2.5
    g = _randn(200, 1, n, seed=8) * sigma
    out_std = standardize(g, 0.0, "linf").output.std(-1).mean().item()
    assert 0.65 < out_std < 0.77, f"L-inf output std = {out_std:.3f} at n={n}"


def test_rms_scale_gives_mean_square_one():
    g = _randn(5, 1, 40, seed=9) * 2 + 3  # not centered: RMS keeps the mean
    res = rms_scale(g, 0.0)
    assert_close(res.output.square().mean(-1), torch.ones(5, 1, dtype=torch.float64), atol=1e-12, rtol=0)
    assert res.mean is None and res.var is None
    assert (res.output.mean(-1) > 0.5).all()  # not centered


def test_apply_stats_and_recoveries():
    x = _randn(2, 3, 4, seed=10)
    mean, var = _randn(3, 1, 1, seed=11), 0.5 + _randn(3, 1, 1, seed=12).abs()
    g = BatchPartition().group(x)
    assert_close(apply_stats(g, mean, var, 1e-3), (g - mean) / torch.sqrt(var + 1e-3), **TOL64)
    w, b = _randn(3, seed=13), _randn(3, seed=14)
    assert_close(channel_affine(x, w, b), x * w.view(1, 3, 1) + b.view(1, 3, 1), **TOL64)
    we, be = _randn(3, 4, seed=15), _randn(4, seed=16)
    assert_close(element_affine(x, we, be), x * we + be, **TOL64)
    with pytest.raises(ValueError, match=r"expected weight of shape \(3,\), got \(4,\)"):
        channel_affine(x, _randn(4), None)


def test_moments_accumulate_low_precision_in_float32():
    x = (_randn(4, 300, seed=17) + 3).to(torch.bfloat16)
    mean, var = moments(x, dim=-1)
    assert mean.dtype == var.dtype == torch.float32
    want_var, want_mean = torch.var_mean(x.double(), dim=-1, correction=0)
    assert_close(mean.double(), want_mean, rtol=1e-6, atol=1e-6)
    assert_close(var.double(), want_var, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ invariances


# BatchNorm refuses eps = 0 in training (as torch's does); the smallest positive float64 is exact here.
_TINY = torch.finfo(torch.float64).tiny


def _bn_train(x, eps=_TINY):
    m = normlab.nn.BatchNorm2d(x.shape[1], eps=eps, affine=False, track_running_stats=False).double()
    return m(x)


@pytest.mark.parametrize("shape", [(4, 3, 4, 5), (4, 3, 2, 3)], ids=["fast-road", "torch-kernel"])
def test_bn_invariant_to_positive_affine_of_input(shape):
    x = _randn(*shape, seed=20)
    a = torch.tensor([0.3, 2.0, 7.0], dtype=torch.float64).view(1, 3, 1, 1)
    b = torch.tensor([5.0, -1.0, 0.25], dtype=torch.float64).view(1, 3, 1, 1)
    # eps is tiny vs every variance here, so the invariance holds to ~eps/var.
    eps = 1e-12
    assert_close(_bn_train(a * x + b, eps), _bn_train(x, eps), rtol=1e-9, atol=1e-9)
    # and a negative scale flips the sign (so the test can tell scales apart)
    assert_close(_bn_train(-a * x + b, eps), -_bn_train(x, eps), rtol=1e-9, atol=1e-9)


def test_bn_not_invariant_with_eps():
    """With eps > 0 the invariance is only approximate: shrinking x makes eps matter."""
    x = _randn(4, 3, 4, 5, seed=21)
    assert not torch.allclose(_bn_train(1e-3 * x, eps=1e-5), _bn_train(x, eps=1e-5), atol=1e-3)


def test_layer_norm_invariant_to_per_sample_affine():
    x = _randn(3, 4, 5, seed=22)
    a = torch.tensor([0.5, 3.0, 10.0], dtype=torch.float64).view(3, 1, 1)
    b = torch.tensor([-2.0, 0.5, 100.0], dtype=torch.float64).view(3, 1, 1)
    ln = normlab.nn.LayerNorm((4, 5), eps=0.0).double()
    assert_close(ln(a * x + b), ln(x), rtol=1e-9, atol=1e-9)
    ln2d = normlab.nn.LayerNorm2d(4, eps=0.0).double()
    x4 = _randn(3, 4, 2, 2, seed=23)
    a4 = _randn(3, 1, 2, 2, seed=24).abs() + 0.1  # any positive per-(sample, position) affine
    b4 = _randn(3, 1, 2, 2, seed=25)
    assert_close(ln2d(a4 * x4 + b4), ln2d(x4), rtol=1e-9, atol=1e-9)


def test_rms_norm_invariant_to_scaling_not_to_shift():
    x = _randn(3, 8, seed=26)
    rms = normlab.nn.RMSNorm(8, eps=0.0).double()
    a = torch.tensor([0.2, 4.0, 50.0], dtype=torch.float64).view(3, 1)
    assert_close(rms(a * x), rms(x), rtol=1e-10, atol=1e-10)
    assert_close(rms(-x), -rms(x), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(rms(x + 1.0), rms(x), atol=1e-2)


def test_group_norm_1_group_is_layer_norm_over_chw():
    x = _randn(2, 6, 3, 4, seed=27) * 2 + 1
    w, b = _randn(6, seed=28), _randn(6, seed=29)
    gn = normlab.nn.GroupNorm(1, 6, eps=1e-4).double()
    with torch.no_grad():
        gn.weight.copy_(w)
        gn.bias.copy_(b)
    # per-channel affine == per-element affine constant over (H, W)
    we, be = w.view(6, 1, 1).expand(6, 3, 4), b.view(6, 1, 1).expand(6, 3, 4)
    assert_close(gn(x), F.layer_norm(x, (6, 3, 4), we, be, 1e-4), **TOL64)
    ln = normlab.nn.LayerNorm((6, 3, 4), eps=1e-4).double()
    with torch.no_grad():
        ln.weight.copy_(we)
        ln.bias.copy_(be)
    assert_close(gn(x), ln(x), **TOL64)


def test_group_norm_c_groups_is_instance_norm():
    x = _randn(2, 6, 3, 4, seed=30) * 2 + 1
    w, b = _randn(6, seed=31), _randn(6, seed=32)
    gn = normlab.nn.GroupNorm(6, 6, eps=1e-4).double()
    inn = normlab.nn.InstanceNorm2d(6, eps=1e-4, affine=True).double()
    for m in (gn, inn):
        with torch.no_grad():
            m.weight.copy_(w)
            m.bias.copy_(b)
    assert_close(gn(x), inn(x), **TOL64)
    assert_close(gn(x), G.instance_norm(x, w, b, 1e-4)[0], **TOL64)
    gs = normlab.nn.GroupNorm.from_group_size(6, 1, eps=1e-4).double()
    assert gs.num_groups == 6


def test_positional_norm_standardizes_each_pixel():
    x = _randn(2, 5, 3, 3, seed=33) * 3 + 1
    y = normlab.nn.LayerNorm2d(5, eps=0.0, elementwise_affine=False).double()(x)
    var, mean = torch.var_mean(y, dim=1, correction=0)
    assert_close(mean, torch.zeros_like(mean), atol=1e-12, rtol=0)
    assert_close(var, torch.ones_like(var), atol=1e-12, rtol=0)


# ------------------------------------------------------------------ running statistics


def test_update_running_stats_ema_math():
    rm0, rv0 = _randn(4, seed=34), 1 + _randn(4, seed=35).abs()
    mean, var = _randn(4, seed=36), 0.5 + _randn(4, seed=37).abs()
    count, m = 10, 0.3
    rm, rv = rm0.clone(), rv0.clone()
    update_running_stats(rm, rv, mean, var, count, m)
    assert_close(rm, (1 - m) * rm0 + m * mean, **TOL64)
    assert_close(rv, (1 - m) * rv0 + m * var * count / (count - 1), **TOL64)  # unbiased into running_var
    # tensor momentum (the cumulative-average road) gives the same numbers
    rm_t, rv_t = rm0.clone(), rv0.clone()
    update_running_stats(rm_t, rv_t, mean, var, count, torch.tensor(m, dtype=torch.float64))
    assert_close(rm_t, rm, **TOL64)
    assert_close(rv_t, rv, **TOL64)
    # None buffers are skipped; results stay in the buffers' dtype
    rm32 = rm0.float()
    update_running_stats(rm32, None, mean, var, count, m)
    assert rm32.dtype == torch.float32
    assert_close(rm32.double(), (1 - m) * rm0 + m * mean, rtol=1e-6, atol=1e-6)


def test_momentum_factor():
    assert momentum_factor(0.1, torch.tensor(5)) == 0.1
    assert momentum_factor(0.1, None) == 0.1
    f = momentum_factor(None, torch.tensor(4))
    assert isinstance(f, torch.Tensor) and f.dim() == 0
    assert f.item() == pytest.approx(0.25, rel=1e-12)
    assert momentum_factor(None, torch.tensor(0)).item() == 1.0  # clamped: the first batch replaces the init
    with pytest.raises(ValueError, match="needs num_batches_tracked"):
        momentum_factor(None, None)


def test_cumulative_average_is_the_plain_mean_of_batches():
    """momentum=None: after k batches the running mean is the average of the k batch means (float64)."""
    rm, rv = torch.full((3,), 7.0, dtype=torch.float64), torch.full((3,), 9.0, dtype=torch.float64)
    nbt = torch.tensor(0)
    means, variances = [], []
    count = 8
    for k in range(5):
        mean, var = _randn(3, seed=40 + k), 0.5 + _randn(3, seed=50 + k).abs()
        means.append(mean)
        variances.append(var * count / (count - 1))
        nbt += 1
        update_running_stats(rm, rv, mean, var, count, momentum_factor(None, nbt))
    assert_close(rm, torch.stack(means).mean(0), **TOL64)
    assert_close(rv, torch.stack(variances).mean(0), **TOL64)


def test_cumulative_average_module_float64():
    """BatchNorm2d(momentum=None) in float64 keeps the exact cumulative average of batch statistics."""
    bn = normlab.nn.BatchNorm2d(3, momentum=None).double()
    xs = [_randn(4, 3, 4, 4, seed=60 + k) * (k + 1) + k for k in range(3)]
    for x in xs:
        bn(x)
    want_mean = torch.stack([x.mean((0, 2, 3)) for x in xs]).mean(0)
    want_var = torch.stack([x.var((0, 2, 3), correction=1) for x in xs]).mean(0)
    assert bn.num_batches_tracked.item() == 3
    assert_close(bn.running_mean, want_mean, **TOL64)
    assert_close(bn.running_var, want_var, **TOL64)


# ------------------------------------------------------------------ BN backward


@pytest.mark.parametrize("shape", [(4, 3, 4, 5), (4, 3, 2, 3), (16, 3)], ids=["fast-road", "torch-kernel", "2d"])
def test_bn_backward_projects_out_mean_and_xhat(shape):
    """dx = (1/sigma)(dy - mean(dy) - xhat mean(dy xhat)): per channel sum dx = 0 and sum dx xhat = 0."""
    cls = normlab.nn.BatchNorm2d if len(shape) == 4 else normlab.nn.BatchNorm1d
    bn = cls(3, eps=_TINY).double()  # gamma = 1, beta = 0
    dims = (0,) + tuple(range(2, len(shape)))
    x = (_randn(*shape, seed=70) * 2 + 1).requires_grad_(True)
    y = bn(x)
    dy = _randn(*shape, seed=71)
    (dx,) = torch.autograd.grad(y, x, dy)
    xhat = y.detach()
    assert_close(dx.sum(dims), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    assert_close((dx * xhat).sum(dims), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    # and the closed form itself
    view = [1, 3] + [1] * (len(shape) - 2)
    sigma = x.detach().var(dims, correction=0).sqrt().view(view)
    want = (dy - dy.mean(dims, keepdim=True) - xhat * (dy * xhat).mean(dims, keepdim=True)) / sigma
    assert_close(dx, want, **TOL64)
