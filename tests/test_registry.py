"""The registry: names, aliases, spec strings, create_norm / get_norm / get_entry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normlab
from normlab import nn as nln

EXPECTED = {
    "batchnorm1d": nln.BatchNorm1d,
    "batchnorm2d": nln.BatchNorm2d,
    "batchnorm3d": nln.BatchNorm3d,
    "layernorm": nln.LayerNorm,
    "layernorm2d": nln.LayerNorm2d,
    "layernorm3d": nln.LayerNorm3d,
    "groupnorm": nln.GroupNorm,
    "instancenorm1d": nln.InstanceNorm1d,
    "instancenorm2d": nln.InstanceNorm2d,
    "instancenorm3d": nln.InstanceNorm3d,
    "rmsnorm": nln.RMSNorm,
    "localresponsenorm": nln.LocalResponseNorm,
}


def test_list_norms_covers_every_module_class():
    names = normlab.list_norms()
    assert len(names) == len(set(names))
    assert set(EXPECTED) <= set(names), f"missing {sorted(set(EXPECTED) - set(names))}"
    # Every class exported by normlab.nn is reachable from the registry (ChannelLayerNorm
    # is the shared base of LayerNorm2d/3d).
    exported = {getattr(nln, n) for n in nln.__all__} - {nln.ChannelLayerNorm}
    assert exported <= {normlab.get_norm(n) for n in names}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_get_norm_returns_the_class(name):
    cls = normlab.get_norm(name)
    assert isinstance(cls, type) and issubclass(cls, nn.Module)
    assert cls is EXPECTED[name]


@pytest.mark.parametrize("name", normlab.list_norms())
def test_entry_metadata(name):
    entry = normlab.get_entry(name)
    assert entry.name == name
    assert entry.summary and entry.formula and entry.reduces and entry.paper
    if entry.torch_twin is not None:
        twin = eval(entry.torch_twin, {"torch": torch})  # "torch.nn.X"
        assert issubclass(entry.cls, twin), f"{entry.cls} should subclass its twin {twin}"
    defaults = entry.signature_defaults()
    assert "device" not in defaults and "dtype" not in defaults


def _all_aliases():
    return [(a, n) for n in normlab.list_norms() for a in normlab.get_entry(n).aliases]


@pytest.mark.parametrize(("alias", "name"), _all_aliases(), ids=[a for a, _ in _all_aliases()])
def test_every_alias_resolves(alias, name):
    assert normlab.get_entry(alias).name == name
    assert normlab.get_norm(alias) is normlab.get_norm(name)
    # case and surrounding whitespace do not matter
    assert normlab.get_norm(f"  {alias.upper()} ") is normlab.get_norm(name)


def test_aliases_are_unique():
    aliases = [a for a, _ in _all_aliases()]
    assert len(aliases) == len(set(aliases))
    assert not set(aliases) & set(normlab.list_norms())


@pytest.mark.parametrize(
    ("spec", "features", "cls", "attrs"),
    [
        ("bn", 8, nln.BatchNorm2d, {"num_features": 8, "momentum": 0.1, "eps": 1e-5}),
        ("bn1d", 8, nln.BatchNorm1d, {"num_features": 8}),
        ("bn3d", 8, nln.BatchNorm3d, {"num_features": 8}),
        ("gn", 64, nln.GroupNorm, {"num_groups": 32, "num_channels": 64}),
        ("gn:32", 64, nln.GroupNorm, {"num_groups": 32, "num_channels": 64, "group_size": 2}),
        ("gn:8", 64, nln.GroupNorm, {"num_groups": 8, "group_size": 8}),
        ("gn:group_size=16", 64, nln.GroupNorm, {"num_groups": 4, "group_size": 16}),
        ("gn:num_groups=2,eps=1e-3,affine=false", 6, nln.GroupNorm, {"num_groups": 2, "eps": 1e-3, "affine": False}),
        ("ln", 16, nln.LayerNorm, {"normalized_shape": (16,)}),
        ("ln:eps=1e-6,bias=false", 16, nln.LayerNorm, {"normalized_shape": (16,), "eps": 1e-6, "bias": None}),
        ("ln2d", 32, nln.LayerNorm2d, {"num_channels": 32, "eps": 1e-5}),
        ("ln2d:eps=1e-6", 32, nln.LayerNorm2d, {"eps": 1e-6}),
        ("ln3d", 4, nln.LayerNorm3d, {"num_channels": 4}),
        ("in", 8, nln.InstanceNorm2d, {"num_features": 8, "affine": False, "track_running_stats": False}),
        ("in1d:affine=true", 8, nln.InstanceNorm1d, {"affine": True}),
        ("rms", 16, nln.RMSNorm, {"normalized_shape": (16,), "eps": None}),
        ("rms:eps=1e-6", 16, nln.RMSNorm, {"eps": 1e-6}),
        ("lrn", None, nln.LocalResponseNorm, {"size": 5}),
        ("lrn:3", None, nln.LocalResponseNorm, {"size": 3, "alpha": 1e-4, "beta": 0.75, "k": 1.0}),
        ("lrn:3,alpha=0.5,k=2", None, nln.LocalResponseNorm, {"size": 3, "alpha": 0.5, "k": 2}),
        ("bn:momentum=0.01,eps=1e-3", 8, nln.BatchNorm2d, {"momentum": 0.01, "eps": 1e-3}),
        ("bn:momentum=none", 8, nln.BatchNorm2d, {"momentum": None}),
        ("bn:affine=False,track_running_stats=false", 8, nln.BatchNorm2d, {"affine": False, "running_mean": None}),
        ("BatchNorm2d", 8, nln.BatchNorm2d, {}),
    ],
)
def test_create_norm_builds_the_right_module(spec, features, cls, attrs):
    m = normlab.create_norm(spec, features)
    assert type(m) is cls
    for key, want in attrs.items():
        got = getattr(m, key)
        if want is None:
            assert got is None, key
        else:
            assert got == want and type(got) is type(want), f"{key}: {got!r} != {want!r}"


def test_created_modules_run():
    x = torch.randn(2, 64, 4, 4)
    for spec in ("bn", "gn:32", "gn:group_size=16", "ln2d", "in", "lrn:3"):
        assert normlab.create_norm(spec, 64)(x).shape == x.shape
    assert normlab.create_norm("ln", 4)(x[..., :4]).shape == (2, 64, 4, 4)
    assert normlab.create_norm("rms", 4)(x).shape == x.shape


def test_kwargs_override_spec():
    m = normlab.create_norm("bn:momentum=0.01,eps=1e-3", 8, eps=1e-4)
    assert m.eps == 1e-4 and m.momentum == 0.01
    assert normlab.create_norm("gn:32", 64, num_groups=8).num_groups == 8
    assert normlab.create_norm("gn", 64, num_groups=4).num_groups == 4  # over the registry default (32)
    assert normlab.create_norm("gn", 64, group_size=16).num_groups == 4
    assert normlab.create_norm("lrn:3", size=7).size == 7
    assert normlab.create_norm("ln2d:eps=1e-6", 8, eps=1e-3).eps == 1e-3


def test_create_norm_factory_kwargs():
    m = normlab.create_norm("bn", 4, dtype=torch.float64)
    assert m.weight.dtype == m.running_mean.dtype == torch.float64
    m = normlab.create_norm("ln2d", 4, dtype=torch.float64)
    assert m.weight.dtype == torch.float64


def test_parse_spec():
    entry, kwargs = normlab.parse_spec("gn:16,eps=1e-6,affine=true")
    assert entry.name == "groupnorm"
    assert kwargs == {"num_groups": 16, "eps": 1e-6, "affine": True}
    assert type(kwargs["num_groups"]) is int
    _, kwargs = normlab.parse_spec("bn:momentum=None")
    assert kwargs == {"momentum": None}


def test_register_norm_rejects_duplicates():
    entry = normlab.get_entry("bn")
    with pytest.raises(ValueError, match="norm name 'batchnorm2d' is already registered"):
        normlab.register_norm(entry)
