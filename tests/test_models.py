"""normlab.models: norm adaptation (build_norm), MLP / CNN / VGG / ResNet shapes and layouts, init_weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normlab
import normlab.nn as nlnn
from normlab.models import CNN, MLP, build_norm, init_weights, resnet_small, vgg_small
from normlab.models import _Residual as Residual

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d)
NORM_TYPES += (nn.RMSNorm,)


def _norms(model):
    return [m for m in model.modules() if isinstance(m, NORM_TYPES)]


# -------------------------------------------------------------------- build_norm


@pytest.mark.parametrize(
    ("spec", "spatial", "cls"),
    [
        ("bn", 0, nlnn.BatchNorm1d),
        ("bn", 1, nlnn.BatchNorm1d),
        ("bn", 2, nlnn.BatchNorm2d),
        ("bn1d", 2, nlnn.BatchNorm2d),
        ("batchnorm2d", 0, nlnn.BatchNorm1d),
        ("in", 1, nlnn.InstanceNorm1d),
        ("in", 2, nlnn.InstanceNorm2d),
        ("in1d", 2, nlnn.InstanceNorm2d),
        ("ln", 0, nlnn.LayerNorm),
        ("rms", 0, nlnn.RMSNorm),
        ("gn:4", 0, nlnn.GroupNorm),
        ("gn:4", 2, nlnn.GroupNorm),
        ("ln2d", 2, nlnn.LayerNorm2d),
    ],
)
def test_build_norm_mapping(spec, spatial, cls):
    m = build_norm(spec, 8, spatial)
    assert type(m) is cls


def test_build_norm_torch_types_and_options():
    assert isinstance(build_norm("bn", 8, 0), nn.BatchNorm1d)
    assert isinstance(build_norm("bn", 8, 2), nn.BatchNorm2d)
    assert build_norm("bn:momentum=0.5", 8, 2).momentum == 0.5
    assert build_norm("bn:momentum=0.5", 8, 0).momentum == 0.5
    ln = build_norm("ln", 8, 0)
    assert isinstance(ln, nn.LayerNorm) and tuple(ln.normalized_shape) == (8,)
    gn = build_norm("gn:4", 8, 2)
    assert gn.num_groups == 4 and gn.num_channels == 8
    for spatial in (1, 2):
        ln = build_norm("ln", 8, spatial)
        assert isinstance(ln, nn.GroupNorm) and ln.num_groups == 1 and ln.num_channels == 8
    assert build_norm("ln:eps=0.001", 8, 2).eps == 0.001
    assert isinstance(build_norm(None, 8, 2), nn.Identity)
    assert isinstance(build_norm("none", 8, 0), nn.Identity)


def test_build_norm_errors():
    with pytest.raises(ValueError, match="Linear"):
        build_norm("in", 8, 0)
    with pytest.raises(ValueError, match="convolution"):
        build_norm("rms", 8, 2)  # it would normalize over W, silently when W == C
    with pytest.raises(ValueError, match="unknown norm"):
        build_norm("zz", 8, 0)


def _spec(entry) -> str:
    args = ",".join(f"{k}={v}" for k, v in entry.example.items())
    return f"{entry.name}:{args}" if args else entry.name


@pytest.mark.parametrize("entry", normlab.NORMS.entries(), ids=lambda e: e.name)
@pytest.mark.parametrize("spatial", [0, 1, 2, 3])
def test_build_norm_follows_the_registry_for_every_entry(entry, spatial):
    """Each entry after each layer: a module that normalizes the layer's output, or a clear ValueError."""
    rank = spatial + 2
    variant = entry.rank_variants.get(rank)
    target = normlab.parse_spec(variant)[0] if variant else entry
    if entry.features_arg == "normalized_shape":  # normalizes the last dim: the features only after a Linear
        takes = rank == 2 and rank in entry.ranks
    else:  # rank_variants, where given, list the batched ranks; other ranks are unbatched forms
        takes = rank in entry.ranks and (not entry.rank_variants or rank in entry.rank_variants)
    fits = entry.inputs == ("input",) and (variant is not None or takes)
    if not fits:
        with pytest.raises(ValueError, match=r"norm '.*' (needs|cannot|normalizes|takes forward)"):
            build_norm(_spec(entry), 8, spatial)
        return
    m = build_norm(_spec(entry), 8, spatial)
    assert type(m) is target.cls
    x = torch.randn(4, 8, *(5,) * spatial)
    assert m(x).shape == x.shape


def test_layernorm_after_conv_is_wu_he_layernorm():
    """'ln' after a convolution normalizes each sample over (C, H, W)."""
    x = torch.randn(3, 8, 5, 5, generator=torch.Generator().manual_seed(0))
    m = build_norm("ln", 8, 2)
    torch.testing.assert_close(m(x), F.layer_norm(x, x.shape[1:]), atol=1e-5, rtol=1e-5)
    x1 = x.flatten(2)
    torch.testing.assert_close(build_norm("ln", 8, 1)(x1), F.layer_norm(x1, x1.shape[1:]), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- MLP


@pytest.mark.parametrize("norm", [None, "bn", "ln", "rms", "gn:4"])
@pytest.mark.parametrize("placement", ["before", "after"])
def test_mlp(norm, placement):
    model = MLP(12, 5, width=16, depth=3, norm=norm, placement=placement, activation="tanh")
    x = torch.randn(6, 3, 4)  # flattened to 12 features
    assert model(x).shape == (6, 5)
    layers = list(model)
    assert isinstance(layers[0], nn.Flatten) and isinstance(layers[-1], nn.Linear)
    blocks = [layers[1 + 3 * i : 4 + 3 * i] for i in range(3)]
    for linear, a, b in blocks:
        assert isinstance(linear, nn.Linear)
        norm_layer, act = (a, b) if placement == "before" else (b, a)
        assert isinstance(act, nn.Tanh)
        assert isinstance(norm_layer, nn.Identity) if norm is None else isinstance(norm_layer, NORM_TYPES)
    assert len(_norms(model)) == (0 if norm is None else 3)


def test_mlp_errors_and_options():
    with pytest.raises(ValueError, match="Linear"):
        MLP(4, 2, norm="in")
    with pytest.raises(ValueError, match="placement"):
        MLP(4, 2, norm="bn", placement="middle")
    with pytest.raises(ValueError, match="activation"):
        MLP(4, 2, activation="swish")
    model = MLP(4, 2, depth=2, bias=False)
    hidden = [m for m in model if isinstance(m, nn.Linear)][:-1]
    assert all(m.bias is None for m in hidden)
    assert MLP(4, 2, depth=0)(torch.randn(3, 4)).shape == (3, 2)


# ---------------------------------------------------------------------------- CNNs


@pytest.mark.parametrize("norm", [None, "bn", "ln", "gn:4", "in"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("spatial", [1, 2])
def test_cnn_forward(norm, residual, spatial):
    model = CNN(2, 7, channels=(8, 8, 16), spatial=spatial, norm=norm, residual=residual)
    x = torch.randn(3, 2, *(12,) * spatial)
    out = model(x)
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    conv = nn.Conv1d if spatial == 1 else nn.Conv2d
    assert all(not isinstance(m, (nn.Conv1d, nn.Conv2d)) or isinstance(m, conv) for m in model.modules())
    expected = 0 if norm is None else (5 if residual else 3)  # residual stages: one norm inside, one after
    assert len(_norms(model)) == expected
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("placement", ["before", "after"])
def test_cnn_placement(placement):
    model = CNN(3, 4, channels=(8, 16), norm="bn", placement=placement)
    f = list(model.features)
    assert isinstance(f[0], nn.Conv2d) and f[0].stride == (1, 1)
    assert isinstance(f[3], nn.Conv2d) and f[3].stride == (2, 2)
    for i in (0, 3):
        norm, act = (f[i + 1], f[i + 2]) if placement == "before" else (f[i + 2], f[i + 1])
        assert isinstance(norm, nn.BatchNorm2d) and isinstance(act, nn.ReLU)


@pytest.mark.parametrize("placement", ["before", "after"])
def test_resnet_stage_layout(placement):
    model = CNN(3, 4, channels=(8, 16), norm="gn:4", placement=placement, residual=True, spatial=1)
    stage = model.features[3]
    assert isinstance(stage, nn.Sequential) and isinstance(stage[0], Residual)
    assert isinstance(stage[1], nn.GroupNorm) and isinstance(stage[2], nn.ReLU)
    body, proj = stage[0].body, stage[0].proj
    assert isinstance(proj, nn.Conv1d) and proj.kernel_size == (1,) and proj.stride == (2,)
    kinds = [type(m) for m in body]
    norm_act = [nlnn.GroupNorm, nn.ReLU] if placement == "before" else [nn.ReLU, nlnn.GroupNorm]
    assert kinds == [nn.Conv1d, *norm_act, nn.Conv1d]
    # The residual adds the projection to the body.
    x = torch.randn(2, 8, 10)
    torch.testing.assert_close(stage[0](x), proj(x) + body(x))


def test_residual_identity_shortcut():
    body = nn.Conv1d(4, 4, 3, padding=1)
    block = Residual(body)
    x = torch.randn(2, 4, 6)
    torch.testing.assert_close(block(x), x + body(x))


@pytest.mark.parametrize("norm", [None, "bn", "ln", "gn:4", "in"])
def test_vgg_and_resnet_small(norm):
    x = torch.randn(2, 3, 16, 16)
    vgg = vgg_small(3, 10, norm=norm)
    assert vgg(x).shape == (2, 10)
    assert [m.out_channels for m in vgg.modules() if isinstance(m, nn.Conv2d)] == [32, 64, 128]
    res = resnet_small(3, 10, norm=norm)
    assert res(x).shape == (2, 10)
    assert sum(isinstance(m, Residual) for m in res.modules()) == 2
    assert resnet_small(1, 10, norm=norm, spatial=1)(torch.randn(2, 1, 40)).shape == (2, 10)


def test_cnn_errors():
    with pytest.raises(ValueError, match="spatial"):
        CNN(3, 10, spatial=3)
    with pytest.raises(ValueError, match="convolution"):
        CNN(3, 10, norm="rms")
    with pytest.raises(ValueError, match="placement"):
        CNN(3, 10, norm="bn", placement="inside")


# --------------------------------------------------------------------- init_weights


@pytest.mark.parametrize("c", [0.5, 1.0, 2.0])
def test_init_weights_gaussian_variance(c):
    model = nn.Sequential(nn.Linear(400, 300), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.Conv1d(8, 64, 5))
    init_weights(model, "gaussian", c=c, generator=torch.Generator().manual_seed(0))
    for m in (model[0], model[2], model[3]):
        w = m.weight.detach()
        fan_in = w[0].numel()
        assert fan_in == {0: 400, 2: 16 * 9, 3: 8 * 5}[list(model).index(m)]
        n = w.numel()
        # the sample variance of n Gaussians has relative std sqrt(2 / n); allow 5 of them
        assert abs(float(w.pow(2).mean()) / (c / fan_in) - 1) < 5 * math.sqrt(2 / n)
        assert abs(float(w.mean())) < 5 * math.sqrt(c / fan_in / n)
        assert torch.count_nonzero(m.bias) == 0


def test_init_weights_he_default_and_generator():
    a = MLP(64, 10, width=256, norm="bn")
    init_weights(a, "he", generator=torch.Generator().manual_seed(1))
    w = a[1].weight.detach()
    assert abs(float(w.var()) / (2 / 64) - 1) < 5 * math.sqrt(2 / w.numel())
    b = MLP(64, 10, width=256, norm="bn")
    init_weights(b, "gaussian", c=2.0, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    before = [p.clone() for p in b.parameters()]
    assert init_weights(b, "default") is b
    assert all(torch.equal(p, q) for p, q in zip(before, b.parameters(), strict=True))
    with pytest.raises(ValueError, match="scheme"):
        init_weights(b, "xavier")


@pytest.mark.parametrize("norm", ["bn", "ln", "gn:4"])
def test_init_weights_leaves_norms_alone(norm):
    model = CNN(3, 5, channels=(8, 8), norm=norm, residual=True)
    init_weights(model, "gaussian", c=1.0)
    norms = _norms(model)
    assert norms
    for m in norms:
        assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
    with torch.no_grad():
        for m in norms:
            m.weight.fill_(3.0)
            m.bias.fill_(-1.0)
    init_weights(model, "he")
    assert all(bool((m.weight == 3).all()) and bool((m.bias == -1).all()) for m in norms)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(torch.count_nonzero(m.bias) == 0 for m in convs)


def test_init_swn_sets_the_scaled_weight_norm_gains():
    """Arpit et al. 2019: w = g v/||v|| per output unit, g = sqrt(gain * fan_in / fan_out); head untouched."""
    from normlab.models import MLP, init_weights

    net = MLP(30, 10, width=20, depth=2, norm=None)
    init_weights(net, "swn", c=2.0, generator=torch.Generator().manual_seed(0))
    first, second, head = [m for m in net if isinstance(m, torch.nn.Linear)]
    for layer, fan_in, fan_out in ((first, 30, 20), (second, 20, 20)):
        g = layer.parametrizations.weight.original0
        assert torch.allclose(g, torch.full_like(g, math.sqrt(2.0 * fan_in / fan_out)))
        # the effective weight's rows have norm g, whatever v is
        assert torch.allclose(layer.weight.norm(dim=1), g.flatten(), rtol=1e-5)
        assert torch.count_nonzero(layer.bias) == 0
    assert not hasattr(head, "parametrizations")
