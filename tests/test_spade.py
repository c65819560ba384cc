"""SPADE (Park et al. 2019): forward(input, condition) against the paper's formula and the official module.

References: ``normtable.conditional.spade_reference`` (float64, from the
paper, plain torch) and ``OfficialSPADE`` (the official code's structure in
torch.nn, loaded with the same state). Properties from the math: zero-init
gamma/beta convs give the plain norm exactly; a spatially constant condition
with 1x1 kernels is BN with a per-channel affine (1 + gamma_c, beta_c); the
modulation is local (a change of the condition at one pixel moves the output
only within the two stacked convolutions' receptive field).
"""

from __future__ import annotations

import copy
import doctest
import functools
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

import normlab
import normlab.nn.conditional as conditional
from normlab.nn import SPADE
from normtable import INFOS as ALL_INFOS
from normtable import reference_state
from normtable.conditional import OfficialSPADE, nearest_resize, one_hot_map, randomize_spade, soft_map

INFOS = [i for i in ALL_INFOS if i.name == "spade"]
CASES = [(info, s) for info in INFOS for s in info.samples]
CASE_IDS = [f"{info.id}-{s.id}" for info, s in CASES]
CASE_MODES = [(info, s, t) for info, s in CASES for t in info.modes()]
CASE_MODE_IDS = [f"{info.id}-{s.id}-{'train' if t else 'eval'}" for info, s, t in CASE_MODES]
ERRORS = [(info, e) for info in INFOS for e in info.errors]

TOL64 = {"rtol": 1e-10, "atol": 1e-10}


def _x(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 1.5 + 0.3).to(dtype)


def _spade(num_features=4, label_nc=3, hidden=4, seed=0, dtype=torch.float64, **kwargs) -> SPADE:
    m = SPADE(num_features, label_nc, hidden=hidden, **kwargs)
    randomize_spade(m, seed)
    return m.to(dtype)


def _state(m: nn.Module) -> dict:
    return {k: v.clone() for k, v in m.state_dict().items()}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------ vs the paper's formula


def _check_reference(info, sample, training, dtype, tol, grad_tol):
    module = info.build(torch.float64).to(dtype).train(training)
    inputs64 = sample.inputs(torch.float64, seed=1)
    diff = sample.differentiable or (True,) * len(inputs64)
    inputs = [t.to(dtype).requires_grad_(d) for t, d in zip(inputs64, diff, strict=True)]
    state = reference_state(module, requires_grad=True)
    before = {k: v.clone() for k, v in module.named_buffers()}
    y = module(*inputs)
    assert y.dtype == dtype and y.shape == inputs[0].shape
    dy = _x(y.shape, seed=2)
    names = [n for n, _ in module.named_parameters()]
    leaves = [t for t in inputs if t.requires_grad] + [p for _, p in module.named_parameters()]
    got = torch.autograd.grad(y, leaves, dy.to(dtype))
    refs = [t.to(dtype).to(torch.float64).requires_grad_(d) for t, d in zip(inputs64, diff, strict=True)]
    (ref,) = info.references
    yr = ref(tuple(refs), state, training, dtype)
    want = torch.autograd.grad(yr, [t for t in refs if t.requires_grad] + [state[n] for n in names], dy)
    assert_close(y.double(), yr.detach(), **tol)
    labels = [f"input{i}" for i, t in enumerate(inputs) if t.requires_grad] + names
    for label, g, w in zip(labels, got, want, strict=True):
        assert_close(g.double(), w, **grad_tol, msg=lambda m, n=label: f"grad of {n}: {m}")
    # Running statistics: torch's EMA of the batch mean and the unbiased batch variance (training), else untouched.
    norm = module.param_free_norm
    if getattr(norm, "running_mean", None) is not None:
        x = refs[0].detach()
        if training:
            mom = norm.momentum
            count = x.numel() // x.shape[1]
            mean = x.mean((0, 2, 3))
            var = x.var((0, 2, 3), correction=0) * count / (count - 1)
            assert_close(
                norm.running_mean.double(), (1 - mom) * before["param_free_norm.running_mean"] + mom * mean, **tol
            )
            assert_close(
                norm.running_var.double(), (1 - mom) * before["param_free_norm.running_var"] + mom * var, **tol
            )
            assert int(norm.num_batches_tracked) == 1
        else:
            for k, v in module.named_buffers():
                assert torch.equal(v, before[k]), k


@pytest.mark.parametrize(("info", "sample", "training"), CASE_MODES, ids=CASE_MODE_IDS)
def test_forward_and_every_gradient_float64(info, sample, training):
    _check_reference(info, sample, training, torch.float64, TOL64, TOL64)


@pytest.mark.parametrize(("info", "sample", "training"), CASE_MODES, ids=CASE_MODE_IDS)
def test_forward_and_every_gradient_float32(info, sample, training):
    t32, g32 = info.tol32, info.tol32_grad
    _check_reference(
        info,
        sample,
        training,
        torch.float32,
        {"rtol": t32.rtol, "atol": t32.atol},
        {"rtol": g32.rtol, "atol": g32.atol},
    )


def test_nearest_resize_reference_is_torchs_nearest():
    # The reference's exact floor(i * h / H) and torch's float32 scale agree on every size the table uses.
    for _, sample in CASES:
        _, cond_shape = sample.shapes
        c = _x(cond_shape)
        size = tuple(sample.shapes[0][2:])
        assert torch.equal(nearest_resize(c, size), F.interpolate(c, size=size, mode="nearest")), sample.id


@pytest.mark.parametrize(("info", "sample", "training"), CASE_MODES, ids=CASE_MODE_IDS)
def test_registry_oracle_is_the_module(info, sample, training):
    module = info.build(torch.float64).train(training)
    inputs = sample.inputs(torch.float64, seed=3)
    oracle = normlab.get_entry("spade").oracle
    want = oracle(module, *inputs)  # the generic composition; must not touch the running statistics
    before = _state(module)
    assert_close(oracle(module, *inputs), want, rtol=0, atol=0)
    _assert_same_state(before, _state(module))
    assert_close(module(*inputs), want, **TOL64)


# ------------------------------------------------------------------ the official module


@pytest.mark.parametrize("info", [i for i in INFOS if i.twin is not None], ids=lambda i: i.id)
def test_official_module_checkpoint_both_ways_and_same_training_run(info):
    module = info.build(torch.float64)
    official = info.build_twin(module)  # loads strictly
    assert sorted(official.state_dict()) == sorted(module.state_dict())
    module.load_state_dict(official.state_dict(), strict=True)
    sample = info.samples[0]
    for step in range(3):
        x, c = sample.inputs(torch.float64, seed=20 + step)
        assert_close(module(x, c), official(x, c), **TOL64)
    module.eval()
    official.eval()
    x, c = sample.inputs(torch.float64, seed=30)
    assert_close(module(x, c), official(x, c), **TOL64)
    for key, value in official.state_dict().items():
        assert_close(module.state_dict()[key], value, **TOL64, msg=key)


def test_same_seed_gives_the_official_shared_conv():
    # Constructed in the official order with torch's default init: the same seed, the same shared conv.
    torch.manual_seed(0)
    official = OfficialSPADE(8, 3)
    torch.manual_seed(0)
    ours = SPADE(8, 3)
    assert torch.equal(ours.mlp_shared[0].weight, official.mlp_shared[0].weight)
    assert torch.equal(ours.mlp_shared[0].bias, official.mlp_shared[0].bias)
    assert sorted(ours.state_dict()) == sorted(official.state_dict())


# ------------------------------------------------------------------ properties


@pytest.mark.parametrize("norm", ["bn:affine=false", "in:affine=false", "gn:2,affine=false"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_zero_init_is_exactly_the_plain_norm(norm, dtype):
    spade = SPADE(4, 3, hidden=8, norm=norm).to(dtype)
    plain = copy.deepcopy(spade.param_free_norm)
    x = _x((3, 4, 6, 6), dtype=dtype).requires_grad_(True)
    c = soft_map(3, (3, 3)).to(dtype)
    y = spade(x, c)
    assert torch.equal(y, plain(x.detach()))
    _assert_same_state(_state(plain), _state(spade.param_free_norm))  # the running statistics too
    # It starts as the plain norm, and learns: gamma/beta's convs get a gradient at once.
    y.backward(_x(y.shape, seed=5, dtype=dtype))
    assert spade.mlp_gamma.weight.grad.abs().sum() > 0 and spade.mlp_beta.bias.grad.abs().sum() > 0


def test_zero_init_matches_torchs_batchnorm_without_affine():
    spade = SPADE(4, 3, hidden=8).double()
    bn = nn.BatchNorm2d(4, affine=False).double()
    for seed in range(3):
        x = _x((5, 4, 3, 3), seed=seed)
        assert_close(spade(x, one_hot_map(5, (2, 2), seed=seed)), bn(x), **TOL64)
    for key, value in bn.state_dict().items():
        assert_close(spade.state_dict()[f"param_free_norm.{key}"], value, **TOL64)


def test_reset_parameters_returns_to_the_plain_norm():
    spade = _spade(seed=3)
    x, c = _x((3, 4, 4, 4)), soft_map(3, (2, 2))
    spade(x, c)
    assert not torch.equal(spade(x, c), spade.norm(x))
    spade.reset_parameters()
    assert int(spade.norm.num_batches_tracked) == 0 and torch.equal(spade.norm.running_mean, torch.zeros(4).double())
    assert torch.equal(spade.train()(x, c), spade.norm(x))
    spade(x, c)
    spade.reset_running_stats()
    assert int(spade.norm.num_batches_tracked) == 0 and torch.equal(spade.norm.running_var, torch.ones(4).double())


def test_constant_condition_with_1x1_kernels_is_batchnorm_with_a_per_channel_affine():
    # m constant over (N, H, W) and k=1: gamma and beta are per-channel constants, so SPADE is BN with the
    # affine (1 + gamma_c, beta_c): each output channel has mean beta_c and std |1 + gamma_c| sqrt(var / (var + eps)).
    spade = _spade(num_features=5, label_nc=3, hidden=6, kernel_size=1, seed=4)
    x = _x((4, 5, 6, 7), seed=6)
    c = torch.zeros(4, 3, 2, 2, dtype=torch.float64)
    c[:, 1] = 1.0  # every pixel of every sample is class 1
    y = spade(x, c).detach()
    one = torch.zeros(1, 3, 1, 1, dtype=torch.float64)
    one[:, 1] = 1.0
    with torch.no_grad():
        a = spade.mlp_shared(one)
        gamma, beta = spade.mlp_gamma(a).reshape(5), spade.mlp_beta(a).reshape(5)
    var = x.var((0, 2, 3), correction=0)
    assert_close(y.mean((0, 2, 3)), beta, **TOL64)
    assert_close(y.std((0, 2, 3), correction=0), (1 + gamma).abs() * torch.sqrt(var / (var + 1e-5)), **TOL64)
    view = (1, 5, 1, 1)
    want = (x - x.mean((0, 2, 3), keepdim=True)) / torch.sqrt(var + 1e-5).view(view) * (1 + gamma).view(
        view
    ) + beta.view(view)
    assert_close(y, want, **TOL64)


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_modulation_is_local_to_the_receptive_field(kernel_size):
    spade = _spade(num_features=3, label_nc=2, hidden=4, kernel_size=kernel_size, seed=7).eval()
    x = _x((2, 3, 11, 11), seed=8)
    c = soft_map(2, (11, 11), label_nc=2, seed=9)
    c2 = c.clone()
    c2[1, :, 5, 5] = torch.tensor([0.9, 0.1], dtype=torch.float64)  # one pixel of sample 1
    changed = (spade(x, c2) - spade(x, c)).abs().amax(1) > 0  # (N, H, W)
    r = 2 * (kernel_size // 2)  # two stacked convolutions: the receptive field's radius
    field = torch.zeros_like(changed)
    field[1, 5 - r : 5 + r + 1, 5 - r : 5 + r + 1] = True
    assert not (changed & ~field).any(), "the output moved outside the receptive field"
    assert changed[1, 5, 5]
    # and it does reach the field's edge (ReLU may zero some paths, not all of them here)
    rows, cols = torch.nonzero(changed[1], as_tuple=True)
    assert int(torch.maximum((rows - 5).abs(), (cols - 5).abs()).max()) == r


# ------------------------------------------------------------------ autograd


@pytest.mark.parametrize(
    ("norm", "training"),
    [("bn:affine=false", True), ("bn:affine=false", False), ("in:affine=false", True)],  # IN: eval is the same
    ids=["bn-train", "bn-eval", "in"],
)
def test_gradcheck_and_gradgradcheck_inputs_and_parameters(norm, training):
    spade = _spade(num_features=2, label_nc=2, hidden=3, norm=norm, seed=1).train(training)
    x = _x((3, 2, 4, 4), seed=2).requires_grad_(True)
    c = soft_map(3, (2, 2), label_nc=2, seed=3).requires_grad_(True)
    names = [n for n, _ in spade.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in spade.named_parameters())
    buffers = {k: v.clone() for k, v in spade.named_buffers()}

    def f(x, c, *ps):
        # fresh buffers every call: the running-stat update must not feed back into the numerical Jacobian
        state = {**dict(zip(names, ps, strict=True)), **{k: v.clone() for k, v in buffers.items()}}
        return torch.func.functional_call(spade, state, (x, c))

    assert torch.autograd.gradcheck(f, (x, c, *params))
    assert torch.autograd.gradgradcheck(f, (x, c, *params))


def test_double_backward_hessian_vector_product_matches_finite_differences():
    spade = _spade(seed=2)
    x = _x((3, 4, 4, 4), seed=1)
    c = soft_map(3, (2, 2), seed=2)
    w = _x((3, 4, 4, 4), seed=3)
    v = _x((3, 4, 4, 4), seed=4)
    bufs = {k: b.clone() for k, b in spade.named_buffers()}

    def loss(x):
        state = {**dict(spade.named_parameters()), **{k: b.clone() for k, b in bufs.items()}}
        return (torch.func.functional_call(spade, state, (x, c)) * w).square().sum()

    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(xr), xr, create_graph=True)
    (hv,) = torch.autograd.grad((g * v).sum(), xr)
    h = 1e-6

    def grad_at(z):
        z = z.clone().requires_grad_(True)
        return torch.autograd.grad(loss(z), z)[0]

    fd = (grad_at(x + h * v) - grad_at(x - h * v)) / (2 * h)
    assert_close(hv, fd, rtol=1e-5, atol=1e-5)


def test_in_place_op_on_the_output():
    spade = _spade(seed=5)
    x = _x((3, 4, 4, 4), seed=1).requires_grad_(True)
    c = soft_map(3, (2, 2), seed=2)
    ref = copy.deepcopy(spade)
    (gx,) = torch.autograd.grad(torch.relu(ref(x, c)).sum(), x)
    y = spade(x, c)
    torch.relu_(y)
    (gi,) = torch.autograd.grad(y.sum(), x)
    assert_close(gi, gx, **TOL64)
    y = spade(x, c)
    y.mul_(2.0)
    (gm,) = torch.autograd.grad(y.sum(), x)
    assert_close(gm, 2 * torch.autograd.grad(ref(x, c).sum(), x)[0], **TOL64)


# ------------------------------------------------------------------ layouts and dtypes


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cond_format", ["contiguous", "channels_last"])
def test_channels_last_input_kept(training, cond_format):
    spade = _spade(num_features=4, seed=6, dtype=torch.float32).train(training)
    ref = copy.deepcopy(spade)
    x = _x((3, 4, 6, 5), dtype=torch.float32)
    c = soft_map(3, (3, 5)).float()
    if cond_format == "channels_last":
        c = c.to(memory_format=torch.channels_last)
    xc = x.to(memory_format=torch.channels_last).requires_grad_(True)
    y = spade(xc, c)
    assert y.is_contiguous(memory_format=torch.channels_last)
    want = ref(x.requires_grad_(True), c.contiguous())
    assert_close(y, want, rtol=1e-5, atol=1e-5)
    dy = _x(y.shape, seed=3, dtype=torch.float32)
    assert_close(torch.autograd.grad(y, xc, dy)[0], torch.autograd.grad(want, x, dy)[0], rtol=2e-5, atol=2e-5)
    # contiguous input stays contiguous, whatever the condition's layout
    assert spade(x.detach(), c).is_contiguous()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("module_dtype", [torch.float32, torch.bfloat16], ids=["f32-module", "bf16-module"])
def test_bfloat16_input(training, module_dtype):
    spade = _spade(num_features=4, hidden=8, seed=7, dtype=torch.float32).to(module_dtype).train(training)
    ref = copy.deepcopy(spade).float()
    x = _x((4, 4, 6, 6), seed=8).bfloat16()
    c = one_hot_map(4, (3, 3), seed=9).bfloat16()
    y = spade(x, c)
    assert y.dtype == torch.bfloat16
    want = ref(x.float(), c.float())
    # bfloat16 keeps 8 significant bits; statistics and the recovery are in float32, so the error is the
    # rounding of the input, the inner norm's output and (bf16 module) of the convolutions: ~1% of (|y| + 1).
    assert_close(y.float(), want, rtol=2e-2, atol=2e-2)


def test_float32_module_casts_the_condition_to_its_dtype():
    spade = _spade(seed=8, dtype=torch.float32).eval()
    x = _x((2, 4, 4, 4), dtype=torch.float32)
    c = soft_map(2, (2, 2))
    assert torch.equal(spade(x, c), spade(x, c.float()))  # a float64 map gives what its float32 copy gives
    assert spade(x, c.half()).dtype == torch.float32


# ------------------------------------------------------------------ fx, export, compile


class _InnerNormLeaf(torch.fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return qualname == "param_free_norm" or super().is_leaf_module(m, qualname)


def _trace_check(trace, spade, inputs_list):
    # The mode is a Python-level decision recorded at trace time (as for any module with `if self.training`):
    # trace the module in the mode it will run in.
    for training in (True, False):
        eager = copy.deepcopy(spade).train(training)
        gm = trace(copy.deepcopy(spade).train(training))
        for x, c in inputs_list:
            assert_close(gm(x, c), eager(x, c), **TOL64)
        _assert_same_state(_state(gm), _state(eager))  # the traced module updates the running statistics too
    return gm


def _inputs():
    return [(_x((3, 4, 4, 4), seed=s), soft_map(3, (2, 2), seed=s)) for s in range(2)]


def _trace_inner_leaf(module):
    return torch.fx.GraphModule(module, _InnerNormLeaf().trace(module))


def test_fx_symbolic_trace_records_the_wrapped_steps():
    spade = _spade(seed=9)
    traced = _trace_check(_trace_inner_leaf, spade, _inputs())
    targets = {n.target for n in traced.graph.nodes if n.op == "call_function"}
    assert conditional._spade_condition in targets and conditional._spade_recovery in targets
    # validation runs inside the wrapped call: the traced module still raises SPADE's errors
    with pytest.raises(ValueError, match="label_nc=3 channels"):
        traced(_x((3, 4, 4, 4)), soft_map(3, (2, 2), label_nc=2))


@pytest.mark.parametrize(
    "norm",
    [functools.partial(nn.BatchNorm2d, affine=False), "bn:affine=false", "in:affine=false"],
    ids=["torch-bn-leaf", "bn", "in"],
)
def test_fx_symbolic_trace_through_the_inner_norm(norm):
    # torch.nn.BatchNorm2d is a leaf of fx's default tracer: that case traces SPADE's own forward as it is.
    spade = _spade(seed=9, norm=norm)
    try:
        torch.fx.symbolic_trace(nn.Sequential(copy.deepcopy(spade.param_free_norm)))
    except Exception as err:  # the inner norm's own forward is another module's business
        pytest.skip(f"the inner norm {norm!r} does not trace with symbolic_trace yet: {err}")
    _trace_check(torch.fx.symbolic_trace, spade, _inputs())


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_torch_export(training):
    spade = _spade(seed=10).train(training)
    x, c = _inputs()[0]
    eager = copy.deepcopy(spade)
    ep = torch.export.export(copy.deepcopy(spade), (x, c))
    gm = ep.module()
    for x, c in _inputs():
        assert_close(gm(x, c), eager(x, c), **TOL64)
    if training:  # the running-statistics update is part of the exported program
        for key, value in eager.state_dict().items():
            assert_close(gm.state_dict()[key], value, **TOL64, msg=key)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_torch_compile_fullgraph(training):
    torch._dynamo.reset()
    try:
        spade = _spade(seed=11, dtype=torch.float32).train(training)
        eager = copy.deepcopy(spade)
        compiled = torch.compile(spade, backend="aot_eager", fullgraph=True)
        for x, c in _inputs():
            x, c = x.float().requires_grad_(True), c.float()
            xe = x.detach().clone().requires_grad_(True)
            y, ye = compiled(x, c), eager(xe, c)
            assert_close(y, ye, rtol=1e-5, atol=1e-5)
            dy = torch.ones_like(y)
            assert_close(torch.autograd.grad(y, x, dy)[0], torch.autograd.grad(ye, xe, dy)[0], rtol=2e-5, atol=2e-5)
        for key, value in eager.state_dict().items():
            assert_close(spade.state_dict()[key], value, rtol=1e-6, atol=1e-6, msg=key)
    finally:
        torch._dynamo.reset()


# ------------------------------------------------------------------ errors


def _error_call(info, err):
    module = info.build(torch.float64).train(err.training)
    if err.make is not None:
        inputs = err.make(torch.float64, 0)
    else:
        inputs = tuple(_x(s, seed=i) for i, s in enumerate(err.shapes))
    return module, inputs


@pytest.mark.parametrize(("info", "err"), ERRORS, ids=[f"{i.id}-{e.desc}" for i, e in ERRORS])
def test_bad_usage_raises_a_clear_error_and_changes_nothing(info, err):
    if err.ctor is not None:
        with pytest.raises(err.error, match=err.match):
            normlab.create_norm(info.name, info.features, **{**info.kwargs, **err.ctor})
        return
    module, inputs = _error_call(info, err)
    before = _state(module)
    with pytest.raises(err.error, match=err.match):
        module(*inputs)
    _assert_same_state(before, _state(module))


def test_inner_norm_error_changes_nothing():
    spade = _spade(seed=12)
    before = _state(spade)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        spade(_x((1, 4, 1, 1)), one_hot_map(1, (1, 1)))
    _assert_same_state(before, _state(spade))


def test_condition_on_another_device():
    spade = _spade(seed=12)
    with pytest.raises(ValueError, match=r"on the input's device cpu, got meta.*condition\.to\(input\.device\)"):
        spade(_x((2, 4, 4, 4)), torch.empty(2, 3, 2, 2, device="meta", dtype=torch.float64))


def test_empty_condition_map():
    with pytest.raises(ValueError, match="non-empty spatial size"):
        _spade()(_x((2, 4, 4, 4)), torch.empty(2, 3, 0, 2, dtype=torch.float64))


def test_integer_label_map_message_gives_the_one_hot_snippet_that_works():
    spade = _spade(label_nc=3, seed=13)
    x = _x((2, 4, 4, 4))
    labels = torch.randint(0, 3, (2, 4, 4))
    with pytest.raises(TypeError) as info:
        spade(x, labels)
    snippet = "F.one_hot(labels, label_nc).permute(0, 3, 1, 2).float()"
    assert snippet in str(info.value)
    segmap = eval(snippet, {"F": F, "labels": labels, "label_nc": 3})
    assert spade.float()(x.float(), segmap).shape == x.shape


# ------------------------------------------------------------------ registry, state, docs


def test_registry_entry():
    entry = normlab.get_entry("spade")
    assert entry.cls is SPADE and entry.inputs == ("input", "condition") and entry.statistics == "batch"
    assert entry.family == "conditional" and entry.ranks == (4,)
    m = entry.build_example()
    assert m.label_nc == 3 and m.hidden == 8 and m.num_features == 8
    assert m(*(_x(s).float() for s in entry.example_shapes)).shape == entry.example_shapes[0]
    assert normlab.statistics_kind(m) == "batch" and normlab.mode_dependent(m)
    # the inner norm is a registered batch module of its own: analysis handles it through the submodule
    assert normlab.statistics_kind(m.norm) == "batch" and normlab.mode_dependent(m.norm)
    assert normlab.create_norm("SPADE:5", 8).label_nc == 5
    inner = normlab.create_norm("spade:3,norm=in:affine=false", 8).norm
    assert isinstance(inner, normlab.nn.InstanceNorm2d) and not inner.affine


def test_inner_norm_as_class_or_partial():
    by_partial = SPADE(4, 3, norm=functools.partial(nn.InstanceNorm2d, affine=False))
    assert type(by_partial.norm) is nn.InstanceNorm2d
    by_class = SPADE(4, 3, norm=normlab.nn.BatchNorm2d)
    assert by_class.norm.affine  # a class gets the registry's defaults: affine here (allowed, not parameter-free)
    assert by_class(_x((2, 4, 3, 3)).float(), soft_map(2, (3, 3)).float()).shape == (2, 4, 3, 3)


def test_parametrized_convolutions_are_honoured():
    # The convolutions are called as modules: a parametrization (weight norm, spectral norm) on them applies.
    spade = _spade(seed=15)
    plain = copy.deepcopy(spade)
    torch.nn.utils.parametrizations.weight_norm(spade.mlp_gamma)
    with torch.no_grad():
        spade.mlp_gamma.parametrizations.weight.original0.mul_(2.0)  # magnitudes x2: the weight doubles
        plain.mlp_gamma.weight.mul_(2.0)
    x, c = _x((3, 4, 4, 4)), soft_map(3, (2, 2))
    assert_close(spade(x, c), plain(x, c), **TOL64)
    torch.nn.utils.parametrizations.spectral_norm(spade.mlp_shared[0])
    assert spade(x, c).shape == x.shape


def test_factory_kwargs():
    m = SPADE(4, 3, hidden=4, dtype=torch.float64, device="cpu")
    assert {p.dtype for p in m.parameters()} == {torch.float64}
    assert m.norm.running_mean.dtype == torch.float64 and m.norm.num_batches_tracked.dtype == torch.long
    meta = SPADE(4, 3, hidden=4, device="meta")
    assert {t.device.type for t in meta.state_dict().values()} == {"meta"}


def test_state_dict_pickle_and_deepcopy_round_trip():
    spade = _spade(seed=14)
    x, c = _x((3, 4, 4, 4)), soft_map(3, (2, 2))
    spade(x, c)
    fresh = SPADE(4, 3, hidden=4).double()
    fresh.load_state_dict(spade.state_dict(), strict=True)
    for other in (fresh, pickle.loads(pickle.dumps(spade)), copy.deepcopy(spade)):
        _assert_same_state(_state(other), _state(spade))
        assert torch.equal(other.eval()(x, c), copy.deepcopy(spade).eval()(x, c))


def test_repr():
    assert repr(SPADE(8, 3, hidden=16, kernel_size=5)).startswith(
        "SPADE(\n  8, label_nc=3, hidden=16, kernel_size=5, norm='bn:affine=false'"
    )


def test_docstring_examples_run():
    result = doctest.testmod(conditional, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
