"""The registry: lookup, aliases, spec strings, create_norm; every entry's declared fields checked against behaviour.

Generic over ``normlab.NORMS.entries()``: the statistics kind (a "batch"
entry's training output depends on the other samples, a "sample" or "none"
entry's does not), the accepted input ranks (and the others rejected), the
forward's inputs, the oracle (equal to the module in float64 in train and
eval), the torch class whose checkpoint loads strictly, the example.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import normlab
from normlab import nn as nln
from normlab.functional.checks import InvalidArgumentError
from normtable import make_input, randomize

ENTRIES = normlab.NORMS.entries()
ENTRY_IDS = [e.name for e in ENTRIES]
for_every_entry = pytest.mark.parametrize("entry", ENTRIES, ids=ENTRY_IDS)
TOL64 = {"rtol": 1e-10, "atol": 1e-10}


def _example(entry, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The example module in float64 with random parameters and running statistics, and its inputs."""
    module = entry.build_example()
    randomize(module, seed)
    inputs = tuple(make_input(s, seed=10 * seed + i) for i, s in enumerate(entry.example_shapes))
    return module.double(), inputs


def _torch_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


# ------------------------------------------------------------------ lookup


# A few names and aliases, enough to prove that lookup works; the entries themselves are read from the registry.
LOOKUP = {"bn": nln.BatchNorm2d, "batchnorm1d": nln.BatchNorm1d, "gn": nln.GroupNorm, "ln2d": nln.LayerNorm2d}


@pytest.mark.parametrize("name", sorted(LOOKUP))
def test_get_norm_returns_the_class(name):
    assert normlab.get_norm(name) is LOOKUP[name]


def test_list_norms_is_the_registry_and_reaches_every_exported_norm():
    names = normlab.list_norms()
    assert names == normlab.NORMS.names() and len(names) == len(set(names))
    assert all(normlab.get_entry(n).name == n for n in names)
    # Every norm class exported by normlab.nn is registered, except shared bases and weight-norm
    # parametrizations (registered in WEIGHT_NORMS).
    registered = {normlab.get_norm(n) for n in names}
    parametrizations = {e.parametrization for e in normlab.WEIGHT_NORMS.entries()}
    exported = [getattr(nln, n) for n in nln.__all__]
    norms = {c for c in exported if inspect.isclass(c) and issubclass(c, nn.Module)} - parametrizations
    bases = {c for c in norms if c not in registered and any(issubclass(r, c) for r in registered)}
    assert norms - bases <= registered, (
        f"exported but not registered: {sorted(c.__name__ for c in norms - bases - registered)}"
    )


@for_every_entry
def test_entry_metadata(entry):
    assert entry.summary and entry.formula and entry.reduces and entry.paper
    assert entry.statistics in ("batch", "sample", "none")
    assert entry.ranks and all(isinstance(r, int) and r >= 1 for r in entry.ranks)
    assert entry.inputs[0] == "input" and len(entry.inputs) == len(entry.example_shapes)
    assert len(entry.example_shapes[0]) == entry.input_rank, "the example input has the first declared rank"
    if entry.torch_twin is not None:
        twin = _torch_class(entry.torch_twin)
        assert issubclass(entry.cls, twin), f"{entry.cls} should subclass its twin {twin}"
    defaults = entry.signature_defaults()
    assert "device" not in defaults and "dtype" not in defaults
    for rank, spec in entry.rank_variants.items():
        variant, _ = normlab.parse_spec(spec)
        assert rank in variant.ranks, f"rank_variants[{rank}] = {spec!r} does not accept {rank}D input"


def _all_aliases():
    return [(a, e.name) for e in ENTRIES for a in e.aliases]


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


# ------------------------------------------------------------------ declared fields vs behaviour


@for_every_entry
def test_example_builds_and_runs(entry):
    module, inputs = _example(entry)
    assert type(module) is entry.cls
    for training in (True, False):
        y = module.train(training)(*inputs)
        assert y.shape == inputs[0].shape and y.dtype == inputs[0].dtype


@for_every_entry
def test_forward_takes_the_declared_inputs(entry):
    params = list(inspect.signature(entry.cls.forward).parameters)[1:]
    assert tuple(params) == entry.inputs, f"forward{tuple(params)} vs inputs={entry.inputs}"


@for_every_entry
def test_statistics_kind_matches_behaviour(entry):
    """Change every sample but the first: a "batch" entry's training output for sample 0 moves, others' does not."""
    module, inputs = _example(entry)
    others = tuple(torch.cat([x[:1], 2.0 * x[1:] + 1.5]) for x in inputs)
    with torch.no_grad():
        y = copy.deepcopy(module).train()(*inputs)[0]
        y_others = copy.deepcopy(module).train()(*others)[0]
        y_eval = copy.deepcopy(module).eval()(*inputs)[0]
    moved = not torch.allclose(y, y_others, rtol=1e-9, atol=1e-9)
    if entry.statistics == "batch":
        assert moved, "a 'batch' entry's training output must depend on the other samples of the batch"
        assert normlab.statistics_kind(module) == "batch" and normlab.mode_dependent(module)
    else:
        assert not moved, f"a {entry.statistics!r} entry's output must not depend on the other samples"
        assert normlab.statistics_kind(module) == entry.statistics
    if entry.statistics == "none":
        assert_close(y, y_eval, **TOL64, msg="a 'none' entry computes the same function in train and eval")


def _candidate_shapes(example: tuple[int, ...], rank: int) -> set[tuple[int, ...]]:
    """Shapes of ``rank`` dims made from the example's: leading or trailing dims kept, or dims added."""
    k = len(example)
    if rank <= k:
        return {example[:rank], example[k - rank :]}
    return {example + (3,) * (rank - k), (2,) * (rank - k) + example}


# Ranks 1 to 5 (up to 3-D volumes) are the ones entries declare; rank-agnostic norms
# (GroupNorm, LRN, ...) also take higher ranks without declaring them.
CHECKED_RANKS = range(1, 6)


@for_every_entry
def test_declared_ranks_are_accepted_and_others_rejected(entry):
    module, inputs = _example(entry)
    example = entry.example_shapes[0]
    for rank in CHECKED_RANKS:
        results = {}
        for shape in sorted(_candidate_shapes(example, rank)):
            try:
                with torch.no_grad():
                    y = copy.deepcopy(module)(make_input(shape), *inputs[1:])
                results[shape] = tuple(y.shape) == shape or f"output {tuple(y.shape)}"
            except (ValueError, TypeError) as err:
                results[shape] = f"{type(err).__name__}: {err}"
        if rank in entry.ranks:
            assert any(r is True for r in results.values()), f"declared rank {rank} is not accepted: {results}"
        else:
            accepted = [s for s, r in results.items() if r is True]
            assert not accepted, f"rank {rank} is not declared in ranks={entry.ranks} but {accepted} is accepted"


@for_every_entry
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_oracle_equals_the_module_in_float64(entry, training):
    if entry.oracle is None:
        pytest.skip(f"{entry.name}: the module is its own generic composition (oracle=None)")
    module, inputs = _example(entry)
    module.train(training)
    want = entry.oracle(copy.deepcopy(module), *inputs)  # before the forward moves any running statistics
    got = module(*inputs)
    assert want.dtype == torch.float64
    assert_close(got, want, **TOL64)


def _torch_module_like(cls: type, module: nn.Module) -> nn.Module:
    """``cls`` built with ``module``'s constructor values, read from its attributes by parameter name.

    A parameter/bias attribute stands for ``True`` (present) or ``None`` for ``False``.
    """
    kwargs = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name in ("self", "device", "dtype") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if not hasattr(module, name):
            if p.default is p.empty:
                raise AssertionError(f"{type(module).__name__} has no attribute for {cls.__name__}'s {name!r}")
            continue
        value = getattr(module, name)
        if isinstance(value, torch.Tensor) or (value is None and isinstance(p.default, bool)):
            value = value is not None
        kwargs[name] = value
    return cls(**kwargs).double()


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.checkpoint_class], ids=lambda e: e.name)
def test_checkpoint_class_loads_strictly_both_ways(entry):
    module, inputs = _example(entry)
    theirs = _torch_module_like(_torch_class(entry.checkpoint_class), module)
    theirs.load_state_dict(module.state_dict(), strict=True)
    with torch.no_grad():
        for t in theirs.state_dict().values():
            t.add_(1 if not t.is_floating_point() else 0.5)
    back, _ = _example(entry, seed=3)
    back.load_state_dict(theirs.state_dict(), strict=True)
    for key, t in theirs.state_dict().items():
        assert torch.equal(back.state_dict()[key], t), key
    if entry.torch_twin is not None:  # the same contract: the same outputs, in train and eval
        for training in (True, False):
            with torch.no_grad():
                a = copy.deepcopy(back).train(training)(*inputs)
                b = copy.deepcopy(theirs).train(training)(*inputs)
            assert_close(a, b, **TOL64)


# ------------------------------------------------------------------ create_norm and specs


@pytest.mark.parametrize(
    ("spec", "features", "cls", "attrs"),
    [
        ("bn", 8, nln.BatchNorm2d, {"num_features": 8, "momentum": 0.1, "eps": 1e-5}),
        ("bn1d", 8, nln.BatchNorm1d, {"num_features": 8}),
        ("gn", 64, nln.GroupNorm, {"num_groups": 32, "num_channels": 64}),
        ("gn:8", 64, nln.GroupNorm, {"num_groups": 8, "group_size": 8}),
        ("gn:group_size=16", 64, nln.GroupNorm, {"num_groups": 4, "group_size": 16}),
        ("gn:num_groups=2,eps=1e-3,affine=false", 6, nln.GroupNorm, {"num_groups": 2, "eps": 1e-3, "affine": False}),
        ("ln", 16, nln.LayerNorm, {"normalized_shape": (16,)}),
        ("ln:eps=1e-6,bias=false", 16, nln.LayerNorm, {"normalized_shape": (16,), "eps": 1e-6, "bias": None}),
        ("ln2d:eps=1e-6", 32, nln.LayerNorm2d, {"num_channels": 32, "eps": 1e-6}),
        ("in", 8, nln.InstanceNorm2d, {"num_features": 8, "affine": False, "track_running_stats": False}),
        ("in1d:affine=true", 8, nln.InstanceNorm1d, {"affine": True}),
        ("rms", 16, nln.RMSNorm, {"normalized_shape": (16,), "eps": None}),
        ("lrn", None, nln.LocalResponseNorm, {"size": 5}),
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


@for_every_entry
def test_create_norm_by_name_alias_and_class(entry):
    features = entry.example_features()
    by_name = normlab.create_norm(entry.name, features, **entry.example)
    assert type(by_name) is entry.cls
    for alias in entry.aliases:
        assert type(normlab.create_norm(alias, features, **entry.example)) is entry.cls
    # A registered class gets the registry's num_features keyword and defaults.
    by_class = normlab.create_norm(entry.cls, features, **entry.example)
    assert type(by_class) is entry.cls and repr(by_class) == repr(by_name)


def test_create_norm_with_a_class_or_partial():
    assert normlab.create_norm(nln.GroupNorm, 64).num_groups == 32  # the registry's default
    gn = normlab.create_norm(functools.partial(nln.GroupNorm, 4), 8)  # called as spec(num_features)
    assert type(gn) is nln.GroupNorm and (gn.num_groups, gn.num_channels) == (4, 8)
    bn = normlab.create_norm(nn.BatchNorm2d, 3, momentum=0.2)  # a class the registry does not know
    assert type(bn) is nn.BatchNorm2d and bn.num_features == 3 and bn.momentum == 0.2
    lrn = normlab.create_norm(functools.partial(nn.LocalResponseNorm, 3))  # no num_features
    assert type(lrn) is nn.LocalResponseNorm and lrn.size == 3


def test_kwargs_override_spec():
    m = normlab.create_norm("bn:momentum=0.01,eps=1e-3", 8, eps=1e-4)
    assert m.eps == 1e-4 and m.momentum == 0.01
    assert normlab.create_norm("gn:32", 64, num_groups=8).num_groups == 8
    assert normlab.create_norm("gn", 64, num_groups=4).num_groups == 4  # over the registry default (32)
    assert normlab.create_norm("gn", 64, group_size=16).num_groups == 4
    assert normlab.create_norm("gn:group_size=16", 64, num_groups=2).num_groups == 2
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
    _, kwargs = normlab.parse_spec(" gn : 4 ")
    assert kwargs == {"num_groups": 4}


@pytest.mark.parametrize(
    ("spec", "features", "error", "match"),
    [
        ("zz", 8, ValueError, r"unknown norm 'zz'; known names and aliases: .*batchnorm2d"),
        ("", 8, TypeError, r"a norm spec must be a non-empty string, got ''"),
        (" ", 8, TypeError, r"a norm spec must be a non-empty string"),
        (
            3,
            8,
            TypeError,
            r"create_norm expected a norm name or spec string, a module class or a functools.partial, got int 3",
        ),
        (None, 8, TypeError, r"got NoneType None"),
        (
            "bn:0.1",
            8,
            ValueError,
            r"cannot parse '0.1' in norm spec 'bn:0.1': only the first argument may be positional",
        ),
        ("gn:4,8", 8, ValueError, r"cannot parse '8' in norm spec 'gn:4,8'.*write key=value"),
        ("gn:abc", 8, InvalidArgumentError, r"num_groups"),
        ("bn:foo=1", 8, TypeError, r"create_norm\('bn:foo=1', 8\): .*foo"),
        ("gn", None, TypeError, r"norm 'groupnorm' needs num_features"),
        ("gn:num_groups=2,group_size=4", 8, InvalidArgumentError, r"give one of num_groups and group_size"),
    ],
)
def test_spec_errors(spec, features, error, match):
    with pytest.raises(error, match=match):
        normlab.create_norm(spec, features)


def test_register_norm_rejects_duplicates():
    entry = normlab.get_entry("bn")
    with pytest.raises(ValueError, match="norm name 'batchnorm2d' is already registered"):
        normlab.register_norm(entry)


def test_entry_rejects_bad_declarations():
    entry = normlab.get_entry("bn")
    fields = {f: getattr(entry, f) for f in entry.__dataclass_fields__}
    with pytest.raises(ValueError, match="statistics must be one of"):
        normlab.NormEntry(**{**fields, "statistics": "running"})
    with pytest.raises(ValueError, match="one example shape per input"):
        normlab.NormEntry(**{**fields, "example_shapes": ()})


# ------------------------------------------------------- the registries share one spec parser


def test_three_registries_share_the_spec_grammar():
    from normlab.registry import OptimizerEntry, Registry

    assert {normlab.NORMS.kind, normlab.WEIGHT_NORMS.kind, normlab.OPTIMIZERS.kind} == {
        "norm",
        "weight normalization",
        "optimizer",
    }
    for reg in (normlab.NORMS, normlab.WEIGHT_NORMS, normlab.OPTIMIZERS):
        assert type(reg) is Registry
    # An optimizer table parses like the others.
    reg: Registry = Registry("optimizer")
    reg.register(OptimizerEntry("sgd", torch.optim.SGD, "plain SGD", "-", aliases=("s",), primary="lr"))
    entry, kwargs = reg.parse("s:0.5,momentum=0.9,nesterov=true")
    assert entry.cls is torch.optim.SGD and kwargs == {"lr": 0.5, "momentum": 0.9, "nesterov": True}
    with pytest.raises(ValueError, match="unknown optimizer 'adamz'; known names and aliases: s, sgd"):
        reg.parse("adamz")
    with pytest.raises(ValueError, match="optimizer name 'sgd' is already registered"):
        reg.register(OptimizerEntry("sgd", torch.optim.SGD, "again", "-"))
    entry, kwargs = normlab.WEIGHT_NORMS.parse("ws:1e-6")
    assert entry.name == "weight_standardization" and kwargs == {"eps": 1e-6}


def test_create_optimizer_builds_from_a_spec(monkeypatch):
    from normlab.registry import OptimizerEntry, Registry

    reg: Registry = Registry("optimizer")
    reg.register(OptimizerEntry("sgd", torch.optim.SGD, "plain SGD", "-", primary="lr", defaults={"momentum": 0.5}))
    monkeypatch.setattr(normlab.registry, "OPTIMIZERS", reg)
    opt = normlab.registry.create_optimizer("sgd:0.1", [torch.nn.Parameter(torch.zeros(2))], weight_decay=0.01)
    assert opt.defaults["lr"] == 0.1 and opt.defaults["momentum"] == 0.5 and opt.defaults["weight_decay"] == 0.01
