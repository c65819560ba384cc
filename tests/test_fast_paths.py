"""Every fast path in normlab.functional.norms equals the generic composition (the oracle).

DESIGN: "a fast path is allowed only with a test proving it equal to the
generic composition in float64". Outputs and gradients (input, weight, bias)
are compared in float64; the batch-norm roads (fast raw-moment path, torch's
kernel for channels_last / short rows, the stable fallback for |mean| >> std)
are each forced and checked.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from normlab.functional import combine_row_moments, generic, norms, row_moments, stats

TOL64 = {"rtol": 1e-10, "atol": 1e-10}


@pytest.fixture(autouse=True)
def _own_roads_at_small_sizes(monkeypatch):
    """Size thresholds send small inputs to torch's kernels (for speed only); lower them here so
    these small-tensor tests run normlab's own roads (blocked RMS rows, channel-LN GEMVs).
    ``test_size_thresholds_route_small_inputs_to_torch`` checks the default routing."""
    monkeypatch.setattr(norms, "_RMS_MIN_NUMEL", 0)
    monkeypatch.setattr(norms, "_CLN_MIN_NUMEL", 0)
    monkeypatch.setattr(norms, "_BN_MIN_NUMEL", 0)
    monkeypatch.setattr(norms, "_RMS_BLOCK_BYTES", 4096)  # several blocks at test sizes


def _count_calls(monkeypatch, cls):
    calls = []
    original = cls.apply

    def spy(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(cls, "apply", spy)
    return calls


def test_own_roads_are_taken_at_lowered_thresholds(monkeypatch):
    rms = _count_calls(monkeypatch, norms._RMSNormRows)
    cln = _count_calls(monkeypatch, norms._ChannelLayerNormContiguous)
    inl = _count_calls(monkeypatch, norms._InstanceNormChannelsLast)
    norms.rms_norm(_randn(4, 8), (8,), None, 1e-6)
    norms.channel_layer_norm(_randn(2, 3, 4, 5))
    x = _randn(2, 3, 4, 5).to(memory_format=torch.channels_last).requires_grad_(True)
    norms.instance_norm(x)
    assert (len(rms), len(cln), len(inl)) == (1, 1, 1)


def test_size_thresholds_route_small_inputs_to_torch(monkeypatch):
    monkeypatch.undo()  # the default thresholds
    rms = _count_calls(monkeypatch, norms._RMSNormRows)
    cln = _count_calls(monkeypatch, norms._ChannelLayerNormContiguous)
    bn = _count_calls(monkeypatch, norms._BatchNormFromStats)
    norms.rms_norm(_randn(4, 8), (8,), None, 1e-6)
    norms.channel_layer_norm(_randn(2, 3, 4, 5))
    norms.batch_norm(_randn(4, 3, 4, 4), None, None, training=True)
    assert (len(rms), len(cln), len(bn)) == (0, 0, 0)
    norms.rms_norm(_randn(norms._RMS_MIN_NUMEL // 64, 64), (64,), None, 1e-6)
    norms.channel_layer_norm(_randn(1, 4, norms._CLN_MIN_NUMEL // 4))
    norms.batch_norm(_randn(4, 4, norms._BN_MIN_NUMEL // 16), None, None, training=True)
    assert (len(rms), len(cln), len(bn)) == (1, 1, 1)


@pytest.mark.parametrize("affine", [True, False])
def test_channel_layer_norm_double_backward(affine):
    x = _randn(2, 3, 4, 5, seed=31, shift=0.3).requires_grad_(True)
    params = list(_affine(3)) if affine else []
    params = [p.requires_grad_(True) for p in params]

    def fn(x, *p):
        return norms.channel_layer_norm(x, *(p if p else (None, None)), eps=1e-3)

    assert torch.autograd.gradgradcheck(fn, (x, *params))


def _randn(*shape, dtype=torch.float64, seed=0, scale=1.0, shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64).mul(scale).add(shift).to(dtype)


def _affine(c, seed=1, dtype=torch.float64):
    w = (0.5 + torch.rand(c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)).to(dtype)
    b = _randn(c, seed=seed + 1, dtype=dtype)
    return w, b


def _compare(fast_fn, oracle_fn, x, params, tol=TOL64):
    """Outputs and gradients of fast_fn(x, *params) vs oracle_fn(x, *params)."""
    leaves_f = [x.detach().clone().requires_grad_(True)] + [p.detach().clone().requires_grad_(True) for p in params]
    leaves_o = [x.detach().clone().requires_grad_(True)] + [p.detach().clone().requires_grad_(True) for p in params]
    # Keep the input's layout (channels_last stays channels_last) for the fast road.
    leaves_f[0] = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    y_f = fast_fn(*leaves_f)
    y_o = oracle_fn(*leaves_o)
    assert y_f.dtype == y_o.dtype == x.dtype
    assert_close(y_f, y_o, **tol, msg=lambda m: f"output: {m}")
    dy = _randn(*x.shape, seed=99, dtype=x.dtype)
    g_f = torch.autograd.grad(y_f, leaves_f, dy)
    g_o = torch.autograd.grad(y_o, leaves_o, dy)
    for i, (a, b) in enumerate(zip(g_f, g_o, strict=True)):
        assert_close(a, b, **tol, msg=lambda m, i=i: f"gradient of argument {i}: {m}")
    return y_f


class _RowMomentsSpy:
    """Wraps stats.row_moments where norms uses it, recording what it returned."""

    def __init__(self, monkeypatch):
        self.results = []
        monkeypatch.setattr(norms, "row_moments", self)

    def __call__(self, x3):
        out = row_moments(x3)
        self.results.append(out)
        return out


# ------------------------------------------------------------------ batch norm

BN_ROADS = {
    # name: (shape, memory format, expect row_moments called, expect it to succeed)
    "fast-contiguous-4d": ((3, 4, 4, 5), torch.contiguous_format, True),
    "fast-contiguous-3d": ((3, 4, 16), torch.contiguous_format, True),
    "fast-contiguous-5d": ((2, 3, 2, 2, 4), torch.contiguous_format, True),
    "fallback-channels-last": ((3, 4, 4, 5), torch.channels_last, False),
    "fallback-short-rows": ((5, 4, 3, 3), torch.contiguous_format, False),
    "fallback-2d": ((8, 4), torch.contiguous_format, False),
}


@pytest.mark.parametrize("road", list(BN_ROADS))
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
def test_batch_norm_training_equals_generic(road, affine, monkeypatch):
    shape, fmt, fast = BN_ROADS[road]
    spy = _RowMomentsSpy(monkeypatch)
    c = shape[1]
    x = _randn(*shape, seed=3, scale=1.7, shift=0.4).to(memory_format=fmt)
    params = list(_affine(c)) if affine else []
    rm_f, rv_f = _randn(c, seed=5), 0.5 + _randn(c, seed=6).abs()
    rm_o, rv_o = rm_f.clone(), rv_f.clone()
    momentum, eps = 0.2, 1e-3

    def fast_fn(x, *p):
        w, b = p if p else (None, None)
        return norms.batch_norm(x, rm_f, rv_f, w, b, training=True, momentum=momentum, eps=eps)

    oracle_stats = {}

    def oracle_fn(x, *p):
        w, b = p if p else (None, None)
        y, mean, var = generic.batch_norm(x, w, b, eps)
        oracle_stats["mean"], oracle_stats["var"] = mean.detach(), var.detach()
        return y

    _compare(fast_fn, oracle_fn, x, params)
    if fast:
        assert spy.results and all(r is not None for r in spy.results), "expected the fast raw-moment road"
    else:
        assert not spy.results, "expected torch's kernel here (if this layout got a fast road, update BN_ROADS)"
    # Running statistics: torch's EMA with the unbiased batch variance.
    count = x.numel() // c
    assert_close(rm_f, (1 - momentum) * rm_o + momentum * oracle_stats["mean"], **TOL64)
    assert_close(rv_f, (1 - momentum) * rv_o + momentum * oracle_stats["var"] * count / (count - 1), **TOL64)


def test_batch_norm_eval_equals_generic():
    x = _randn(3, 4, 4, 5, seed=7, shift=0.3)
    w, b = _affine(4)
    rm, rv = _randn(4, seed=8), 0.5 + _randn(4, seed=9).abs()
    _compare(
        lambda x, w, b: norms.batch_norm(x, rm, rv, w, b, training=False, eps=1e-4),
        lambda x, w, b: generic.batch_norm_eval(x, rm, rv, w, b, eps=1e-4),
        x,
        [w, b],
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_batch_norm_large_mean_takes_stable_fallback(dtype, monkeypatch):
    """|mean| >> std would wreck E[x^2] - E[x]^2: row_moments must refuse and the result stay accurate."""
    spy = _RowMomentsSpy(monkeypatch)
    shape = (4, 3, 5, 5)  # 25 values per row: long enough for the fast road to be tried
    x = (1000.0 + 1e-3 * _randn(*shape, seed=11)).to(dtype)
    rm, rv = torch.zeros(3, dtype=dtype), torch.ones(3, dtype=dtype)
    rm_t, rv_t = rm.clone(), rv.clone()
    eps = 1e-12  # << var = 1e-6 (torch's training batch_norm refuses eps=0)
    y = norms.batch_norm(x, rm, rv, None, None, training=True, momentum=0.1, eps=eps)
    assert spy.results == [None], "row_moments must detect the cancellation and return None"
    want = F.batch_norm(x, rm_t, rv_t, None, None, training=True, momentum=0.1, eps=eps)
    # The outputs are ~N(0, 1); "1e-3 relative" to that scale. (A raw-moment
    # variance here would have no correct digit at all in float32.)
    assert_close(y, want, rtol=1e-3, atol=1e-3)
    assert y.std().item() == pytest.approx(1.0, rel=0.05)
    assert_close(rm, rm_t, rtol=1e-6, atol=0)
    assert_close(rv, rv_t, rtol=1e-3, atol=1e-12)
    if dtype == torch.float64:
        y_o, _, _ = generic.batch_norm(x, eps=eps)
        assert_close(y, y_o, rtol=1e-8, atol=1e-8)  # 1e6 mean^2/var: ~6 digits lost to the input's own rounding


def test_batch_norm_float32_just_below_cancellation_threshold(monkeypatch):
    """mean^2 / var just under RAW_MOMENT_MAX_RATIO: the fast road is taken and still accurate in float32."""
    spy = _RowMomentsSpy(monkeypatch)
    ratio = 0.9 * stats.RAW_MOMENT_MAX_RATIO
    x64 = _randn(8, 3, 8, 8, seed=12)
    # Every (n, c) row: mean exactly sqrt(ratio), biased std exactly 1 (up to float32 rounding).
    x64 = (x64 - x64.mean((2, 3), keepdim=True)) / x64.std((2, 3), keepdim=True, correction=0)
    x = (x64 + ratio**0.5).float()
    y = norms.batch_norm(x, None, None, training=True, eps=1e-5)
    assert spy.results and spy.results[0] is not None, "the fast road should accept this input"
    want = F.batch_norm(x.double(), None, None, training=True, eps=1e-5)
    # Raw moments lose log10(1 + ratio) ~ 1.7 digits of float32's ~7: errors of a
    # few 1e-6 are expected; 5e-5 leaves room but catches a lost variance.
    assert_close(y.double(), want, rtol=5e-5, atol=5e-5)


# ------------------------------------------------------------------ row moments


def test_row_moments_matches_var_mean_when_well_conditioned():
    x3 = _randn(3, 4, 50, seed=13, shift=2.0)
    mean, var = row_moments(x3)
    want_var, want_mean = torch.var_mean(x3, dim=-1, correction=0)
    assert_close(mean, want_mean, **TOL64)
    assert_close(var, want_var, **TOL64)


@pytest.mark.parametrize("ratio", [2.0, 0.9, 0.5])
def test_row_moments_returns_none_past_the_ratio(ratio):
    """None iff some row has mean^2 > RAW_MOMENT_MAX_RATIO * var."""
    limit = stats.RAW_MOMENT_MAX_RATIO
    base = _randn(2, 3, 40, seed=14)
    base = (base - base.mean(-1, keepdim=True)) / base.std(-1, keepdim=True, correction=0)  # exact mean 0, var 1
    x3 = base.clone()
    x3[1, 2] += (ratio * limit) ** 0.5  # one row: mean^2 / var = ratio * limit
    result = row_moments(x3)
    if ratio > 1:
        assert result is None
    else:
        assert result is not None
        want_var, want_mean = torch.var_mean(x3, dim=-1, correction=0)
        assert_close(result[0], want_mean, **TOL64)
        assert_close(result[1], want_var, rtol=1e-9, atol=1e-9)


def test_row_moments_constant_row_refused():
    x3 = torch.ones(2, 2, 20, dtype=torch.float64)
    x3[0, 0] = torch.linspace(-1, 1, 20, dtype=torch.float64)
    assert row_moments(x3) is None  # var 0 with mean != 0: infinitely ill-conditioned


@pytest.mark.parametrize("dim", [0, 1])
def test_combine_row_moments_equals_pooled_var_mean(dim):
    x = _randn(5, 3, 17, seed=15, scale=2.0)
    x = x + torch.arange(5, dtype=torch.float64).view(5, 1, 1) * 0.7  # groups differ in mean
    v, m = torch.var_mean(x, dim=-1, correction=0)
    mean, var = combine_row_moments(m, v, dim=dim)
    dims = (dim, 2)
    want_var, want_mean = torch.var_mean(x, dim=dims, correction=0)
    assert_close(mean, want_mean, **TOL64)
    assert_close(var, want_var, **TOL64)


# ------------------------------------------------------------------ per-sample norms


IN_LAYOUTS = {
    "4d": ((2, 3, 4, 5), torch.contiguous_format),
    "3d": ((2, 3, 7), torch.contiguous_format),
    "5d": ((3, 2, 2, 2, 3), torch.contiguous_format),
    "4d-channels-last": ((2, 3, 4, 5), torch.channels_last),
    "5d-channels-last": ((3, 2, 2, 2, 3), torch.channels_last_3d),
}


@pytest.mark.parametrize("layout", list(IN_LAYOUTS))
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
def test_instance_norm_equals_generic(layout, affine):
    shape, fmt = IN_LAYOUTS[layout]
    c = shape[1]
    params = list(_affine(c)) if affine else []
    x = _randn(*shape, seed=16, scale=1.5, shift=0.3).to(memory_format=fmt)

    def fast(x, *p):
        w, b = p if p else (None, None)
        return norms.instance_norm(x, None, None, w, b, use_input_stats=True, eps=1e-4)

    def oracle(x, *p):
        w, b = p if p else (None, None)
        return generic.instance_norm(x, w, b, eps=1e-4)[0]

    y = _compare(fast, oracle, x, params)  # with grad: channels-last may take a contiguous detour
    assert y.is_contiguous(memory_format=fmt)
    with torch.no_grad():  # without grad: torch's kernel on the channels-last input directly
        y_ng = fast(x, *params)
    assert y_ng.is_contiguous(memory_format=fmt)
    assert_close(y_ng, y.detach(), **TOL64)


@pytest.mark.parametrize("shift", [0.3, 1000.0], ids=["fast-moments", "stable-fallback"])
def test_instance_norm_running_stats_equal_generic(shift):
    shape = (3, 2, 5, 5)
    x = _randn(*shape, seed=17, shift=shift)
    rm, rv = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    norms.instance_norm(x, rm, rv, use_input_stats=True, momentum=0.25)
    _, mean, var = generic.instance_norm(x)
    s = 25
    assert_close(rm, 0.75 * 0 + 0.25 * mean.mean(0), **TOL64)
    assert_close(rv, 0.75 * 1 + 0.25 * (var * s / (s - 1)).mean(0), **TOL64)


@pytest.mark.parametrize("num_groups", [1, 2, 6])
def test_group_norm_equals_generic(num_groups):
    x = _randn(2, 6, 3, 4, seed=18, scale=1.3, shift=-0.2)
    _compare(
        lambda x, w, b: norms.group_norm(x, num_groups, w, b, eps=1e-4),
        lambda x, w, b: generic.group_norm(x, num_groups, w, b, eps=1e-4),
        x,
        list(_affine(6)),
    )


@pytest.mark.parametrize("normalized_shape", [(5,), (3, 5)], ids=["1dim", "2dims"])
def test_layer_norm_equals_generic(normalized_shape):
    x = _randn(2, 3, 5, seed=19, shift=0.5)
    w = 0.5 + _randn(*normalized_shape, seed=20).abs()
    b = _randn(*normalized_shape, seed=21)
    _compare(
        lambda x, w, b: norms.layer_norm(x, normalized_shape, w, b, eps=1e-4),
        lambda x, w, b: generic.layer_norm(x, normalized_shape, w, b, eps=1e-4),
        x,
        [w, b],
    )


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
def test_channel_layer_norm_equals_generic(fmt, affine):
    x = _randn(2, 5, 3, 4, seed=22, scale=2.0, shift=0.7).to(memory_format=fmt)
    w, b = _affine(5)
    params = {"both": [w, b], "weight": [w], "bias": [b], "none": []}[affine]

    def split(p):
        if affine == "both":
            return p
        if affine == "weight":
            return p[0], None
        if affine == "bias":
            return None, p[0]
        return None, None

    y = _compare(
        lambda x, *p: norms.channel_layer_norm(x, *split(p), eps=1e-4),
        lambda x, *p: generic.channel_layer_norm(x, *split(p), eps=1e-4),
        x,
        params,
    )
    assert y.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize(
    ("shape", "fmt"),
    [
        ((2, 4, 6), torch.contiguous_format),
        ((2, 3, 2, 3, 2), torch.contiguous_format),
        ((2, 3, 2, 3, 2), torch.channels_last_3d),
        ((5, 4), torch.contiguous_format),
    ],
    ids=["3d", "5d", "5d-channels-last", "2d"],
)
def test_channel_layer_norm_other_ranks_equal_generic(shape, fmt):
    x = _randn(*shape, seed=23, shift=0.4).to(memory_format=fmt)
    y = _compare(
        lambda x, w, b: norms.channel_layer_norm(x, w, b),
        lambda x, w, b: generic.channel_layer_norm(x, w, b),
        x,
        list(_affine(shape[1])),
    )
    assert y.is_contiguous(memory_format=fmt)


def test_channel_layer_norm_mixed_dtype_weight():
    """bfloat16 input with float32 parameters (the reduction road) matches float32 math on the same values."""
    x = _randn(2, 4, 3, 3, seed=37, shift=0.5).to(torch.bfloat16)
    w, b = (t.float() for t in _affine(4))
    y = norms.channel_layer_norm(x, w, b)
    assert y.dtype == torch.bfloat16
    want = generic.channel_layer_norm(x.double(), w.double(), b.double())
    # bf16 output rounding (2^-9 relative) dominates.
    assert_close(y.double(), want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("eps", [None, 1e-6, 0.1], ids=["epsNone", "eps1e-6", "eps0.1"])
@pytest.mark.parametrize("normalized_shape", [(5,), (3, 5)], ids=["1dim", "2dims"])
@pytest.mark.parametrize("with_weight", [True, False], ids=["weight", "noweight"])
def test_rms_norm_equals_generic(eps, normalized_shape, with_weight):
    x = _randn(2, 3, 5, seed=24, shift=0.3)
    params = [0.5 + _randn(*normalized_shape, seed=25).abs()] if with_weight else []
    _compare(
        lambda x, *p: norms.rms_norm(x, normalized_shape, p[0] if p else None, eps),
        lambda x, *p: generic.rms_norm(x, normalized_shape, p[0] if p else None, eps),
        x,
        params,
    )


def test_rms_norm_eps_none_is_input_dtype_eps():
    """eps=None uses finfo(input dtype).eps: a float32 input sees 1.19e-7, not float64's 2.2e-16."""
    x = torch.full((1, 4), 1e-4, dtype=torch.float32)  # mean square 1e-8, comparable to float32 eps
    y = norms.rms_norm(x, (4,), None, None)
    want = 1e-4 / (1e-8 + torch.finfo(torch.float32).eps) ** 0.5
    assert_close(y, torch.full_like(x, want), rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "layout", ["noncontiguous", "multi-block", "single-row"], ids=["noncontiguous", "multi-block", "single-row"]
)
def test_rms_norm_other_roads_equal_generic(layout):
    """Non-contiguous input (torch's fused kernel), rows spanning several cache blocks, one row."""
    if layout == "noncontiguous":
        x = _randn(5, 3, 8, seed=26).transpose(0, 1)  # (3, 5, 8), not contiguous
        assert not x.is_contiguous()
    elif layout == "multi-block":
        x = _randn(70, 1024, seed=27, shift=0.2)  # float64: 32 rows of 1024 per 256 KiB block -> 3 blocks
    else:
        x = _randn(1, 8, seed=28)
    d = x.shape[-1]
    w = 0.5 + _randn(d, seed=29).abs()
    _compare(
        lambda x, w: norms.rms_norm(x, (d,), w, 1e-6),
        lambda x, w: generic.rms_norm(x, (d,), w, 1e-6),
        x,
        [w],
    )


@pytest.mark.parametrize("with_weight", [True, False], ids=["weight", "noweight"])
def test_rms_norm_double_backward(with_weight):
    """Hessian tools need double backward through the fast path (create_graph road)."""
    x = _randn(3, 6, seed=30, shift=0.3).requires_grad_(True)
    params = (0.5 + _randn(6, seed=31).abs()).requires_grad_(True) if with_weight else None

    def fn(x, *p):
        return norms.rms_norm(x, (6,), p[0] if p else None, 1e-3)

    inputs = (x, params) if with_weight else (x,)
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)
    # and the create_graph gradients equal the generic composition's
    leaves_o = [t.detach().clone().requires_grad_(True) for t in inputs]
    dy = _randn(3, 6, seed=32)
    g_f = torch.autograd.grad(fn(*inputs), inputs, dy, create_graph=True)
    g_o = torch.autograd.grad(
        generic.rms_norm(leaves_o[0], (6,), leaves_o[1] if with_weight else None, 1e-3), leaves_o, dy, create_graph=True
    )
    for a, b in zip(g_f, g_o, strict=True):
        assert_close(a, b, **TOL64)
    # second derivatives: d/dx of <grad_x, v>
    v = _randn(3, 6, seed=33)
    (h_f,) = torch.autograd.grad((g_f[0] * v).sum(), inputs[0])
    (h_o,) = torch.autograd.grad((g_o[0] * v).sum(), leaves_o[0])
    assert_close(h_f, h_o, **TOL64)


def test_batch_norm_fast_path_double_backward(monkeypatch):
    """The fast BN road's backward (torch's batch-norm backward) is differentiable again."""
    spy = _RowMomentsSpy(monkeypatch)
    x = _randn(2, 3, 4, 4, seed=34, shift=0.5).requires_grad_(True)
    w, b = (t.requires_grad_(True) for t in _affine(3))

    def fn(x, w, b):
        return norms.batch_norm(x, None, None, w, b, training=True, eps=1e-3)

    assert torch.autograd.gradgradcheck(fn, (x, w, b))
    assert spy.results and all(r is not None for r in spy.results)
    # Hessian-vector product equals the generic composition's
    dy, v = _randn(2, 3, 4, 4, seed=35), _randn(2, 3, 4, 4, seed=36)
    xo = x.detach().clone().requires_grad_(True)
    (gf,) = torch.autograd.grad(fn(x, w, b), x, dy, create_graph=True)
    (go,) = torch.autograd.grad(generic.batch_norm(xo, w, b, 1e-3)[0], xo, dy, create_graph=True)
    assert_close(gf, go, **TOL64)
    (hf,) = torch.autograd.grad((gf * v).sum(), x)
    (ho,) = torch.autograd.grad((go * v).sum(), xo)
    assert_close(hf, ho, **TOL64)


@pytest.mark.parametrize("shifted", [False, True], ids=["kernel-statistics", "shifted-rerun"])
@pytest.mark.parametrize(
    ("shape", "groups", "fmt"),
    [((2, 6, 3, 4), 3, torch.channels_last), ((2, 4, 2, 3, 2), 2, torch.channels_last_3d), ((2, 6, 3, 4), 6, None)],
    ids=["gn-4d", "gn-5d", "in-4d"],
)
def test_group_norm_channels_last_equals_generic(shifted, shape, groups, fmt, monkeypatch):
    """The checked channels-last road (GroupNorm's, and InstanceNorm's Function, G = C) equals the generic
    composition in float64 (outputs and gradients), on the kernel's own statistics and on the shifted rerun."""
    fmt = fmt or torch.channels_last
    if shifted:  # every group counts as ill-conditioned: the shifted rerun
        monkeypatch.setattr(norms, "_CL_RAW_MAX_RATIO", 0.0)
    if groups == shape[1]:
        spy = _count_calls(monkeypatch, norms._InstanceNormChannelsLast)
    else:
        spy = []
        original = norms._group_norm_channels_last
        monkeypatch.setattr(norms, "_group_norm_channels_last", lambda *a: (spy.append(1), original(*a))[1])
    x = _randn(*shape, seed=40, scale=1.5, shift=0.3).to(memory_format=fmt)
    c = shape[1]

    def fast(x, w, b):
        if groups == c:
            return norms.instance_norm(x, None, None, w, b, use_input_stats=True, eps=1e-4)
        return norms.group_norm(x, groups, w, b, eps=1e-4)

    y = _compare(fast, lambda x, w, b: generic.group_norm(x, groups, w, b, eps=1e-4), x, list(_affine(c)))
    assert spy and y.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("groups", [2, 6], ids=["gn", "in"])
def test_group_norm_zero_eps_road_equals_generic(groups):
    """eps=0 runs the batch-norm kernel on the (1, N*G, M) view: on ordinary input the generic numbers."""
    x = _randn(2, 6, 3, 4, seed=41, shift=0.5)
    if groups == 6:
        fast = lambda x, w, b: norms.instance_norm(x, None, None, w, b, use_input_stats=True, eps=0.0)  # noqa: E731
    else:
        fast = lambda x, w, b: norms.group_norm(x, groups, w, b, eps=0.0)  # noqa: E731
    _compare(fast, lambda x, w, b: generic.group_norm(x, groups, w, b, eps=0.0), x, list(_affine(6)))
