"""Bad inputs raise ValueError (or TypeError where torch does) naming what was expected and what came."""

from __future__ import annotations

import re

import pytest
import torch

import normlab
from cases import CASES, make_input
from normlab import nn as nln
from normlab.functional import InputDTypeError


def _x(*shape):
    return torch.randn(shape)


# ------------------------------------------------------------------ rank


WRONG_RANK = {
    "BatchNorm1d": (
        nln.BatchNorm1d(4),
        (2, 4, 3, 3),
        r"BatchNorm1d expected 2D or 3D input, got 4D input of shape \(2, 4, 3, 3\)",
    ),
    "BatchNorm2d": (nln.BatchNorm2d(4), (2, 4, 3), r"BatchNorm2d expected 4D input, got 3D input of shape \(2, 4, 3\)"),
    "BatchNorm3d": (nln.BatchNorm3d(4), (2, 4, 3, 3), r"BatchNorm3d expected 5D input, got 4D input"),
    "InstanceNorm1d": (nln.InstanceNorm1d(4), (2, 4, 3, 3), r"InstanceNorm1d expected 2D or 3D input, got 4D input"),
    "InstanceNorm2d": (nln.InstanceNorm2d(4), (4, 3), r"InstanceNorm2d expected 3D or 4D input, got 2D input"),
    # 4D is a valid (unbatched) rank for InstanceNorm3d
    "InstanceNorm3d": (nln.InstanceNorm3d(4), (4, 3, 3), r"InstanceNorm3d expected 4D or 5D input, got 3D input"),
    "LayerNorm2d": (nln.LayerNorm2d(4), (2, 4, 3), r"LayerNorm2d expected 4D input, got 3D input of shape \(2, 4, 3\)"),
    "LayerNorm3d": (nln.LayerNorm3d(4), (2, 4, 3, 3), r"LayerNorm3d expected 5D input, got 4D input"),
    "GroupNorm": (nln.GroupNorm(2, 4), (4,), r"GroupNorm expected input with at least 2 dims \(N, C, \.\.\.\), got 1D"),
    "LocalResponseNorm": (
        nln.LocalResponseNorm(3),
        (2, 4),
        r"expected input with at least 3 dims .*got 2D input of shape \(2, 4\)",
    ),
}


@pytest.mark.parametrize("name", list(WRONG_RANK))
def test_wrong_rank(name):
    module, shape, pattern = WRONG_RANK[name]
    with pytest.raises(ValueError, match=pattern):
        module(_x(*shape))


# ------------------------------------------------------------------ channels


WRONG_CHANNELS = {
    "BatchNorm1d": (nln.BatchNorm1d(4), (2, 3)),
    "BatchNorm2d": (nln.BatchNorm2d(4), (2, 3, 5, 5)),
    "BatchNorm3d": (nln.BatchNorm3d(4), (2, 3, 2, 2, 2)),
    "GroupNorm": (nln.GroupNorm(2, 4), (2, 6, 3, 3)),
    "LayerNorm2d": (nln.LayerNorm2d(4), (2, 3, 3, 3)),
    "InstanceNorm2d": (nln.InstanceNorm2d(4, affine=True), (2, 3, 3, 3)),
    "InstanceNorm1d": (nln.InstanceNorm1d(4, track_running_stats=True), (2, 3, 5)),
}


@pytest.mark.parametrize("name", list(WRONG_CHANNELS))
def test_wrong_channel_count(name):
    module, shape = WRONG_CHANNELS[name]
    got = shape[1]
    with pytest.raises(ValueError, match=rf"{name} expected input with 4 channels at dim 1, got {got} \(input shape"):
        module(_x(*shape))


def test_instance_norm_channel_mismatch_without_state_warns_like_torch():
    with pytest.warns(UserWarning, match="input has 3 channels but num_features=4"):
        y = nln.InstanceNorm2d(4)(_x(2, 3, 3, 3))
    assert y.shape == (2, 3, 3, 3)


# ------------------------------------------------------------------ groups


def test_group_norm_groups_must_divide_channels():
    with pytest.raises(
        ValueError,
        match=r"num_channels \(10\) must be divisible by num_groups \(4\); divisors of 10: "
        r"\[1, 2, 5, 10\]",
    ):
        nln.GroupNorm(4, 10)


def test_group_norm_group_size_must_divide_channels():
    with pytest.raises(ValueError, match=r"num_channels \(10\) must be divisible by group_size \(4\)"):
        nln.GroupNorm.from_group_size(10, 4)
    with pytest.raises(ValueError, match=r"group_size must be a positive int, got 0"):
        nln.GroupNorm.from_group_size(10, 0)
    with pytest.raises(ValueError, match=r"group_size must be an int, got the float 2.0"):
        nln.GroupNorm.from_group_size(10, 2.0)


def test_group_norm_nonpositive_groups():
    with pytest.raises(ValueError, match="num_groups must be a positive int, got 0"):
        nln.GroupNorm(0, 4)


def test_group_norm_signature_is_torchs():
    import inspect

    assert list(inspect.signature(nln.GroupNorm).parameters) == list(inspect.signature(torch.nn.GroupNorm).parameters)
    with pytest.raises(ValueError, match="give one of num_groups and group_size"):
        normlab.create_norm("gn", 4, num_groups=2, group_size=2)


def test_functional_group_norm_indivisible():
    with pytest.raises(ValueError, match=r"num_channels \(6\) must be divisible by num_groups \(4\)"):
        normlab.functional.group_norm(_x(2, 6, 3), 4)


# ------------------------------------------------------------------ too few values


@pytest.mark.parametrize("shape", [(1, 4), (1, 4, 1)], ids=["2d", "3d"])
def test_batch_statistics_from_one_value_per_channel(shape):
    bn = nln.BatchNorm1d(4)
    with pytest.raises(
        ValueError, match=re.escape(f"Expected more than 1 value per channel when training, got input size {shape}")
    ):
        bn(_x(*shape))
    bn.eval()
    assert bn(_x(*shape)).shape == shape  # inference with running statistics is fine


def test_batch_norm_2d_one_value_per_channel():
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when training.*\(1, 3, 1, 1\)"):
        nln.BatchNorm2d(3)(_x(1, 3, 1, 1))


@pytest.mark.parametrize(
    "module",
    [nln.InstanceNorm2d(3), nln.InstanceNorm2d(3, affine=True, track_running_stats=True)],
    ids=["plain", "affine-track"],
)
def test_instance_norm_one_spatial_element(module):
    with pytest.raises(
        ValueError, match=r"Expected more than 1 value per spatial element.*got input size \(2, 3, 1, 1\)"
    ):
        module(_x(2, 3, 1, 1))


def test_instance_norm_one_spatial_element_1d():
    with pytest.raises(ValueError, match=r"Expected more than 1 value per spatial element.*\(2, 3, 1\)"):
        nln.InstanceNorm1d(3)(_x(2, 3, 1))


# ------------------------------------------------------------------ dtype


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool], ids=["int64", "int32", "bool"])
def test_integer_input_raises_input_dtype_error(case, dtype):
    module = case.build(torch.float32)
    x = make_input(case.shapes[0]).round().to(dtype)
    pattern = rf"expected a floating-point input \(float64, float32, bfloat16 or float16\), got dtype {dtype}"
    with pytest.raises(InputDTypeError, match=pattern):
        module(x)
    # catchable both ways
    with pytest.raises(ValueError, match=pattern):
        module(x)
    with pytest.raises(TypeError, match=pattern):
        module(x)


def test_input_dtype_error_is_value_and_type_error():
    assert issubclass(InputDTypeError, ValueError) and issubclass(InputDTypeError, TypeError)


def test_non_tensor_input():
    with pytest.raises(TypeError, match="expected input to be a torch.Tensor, got list"):
        nln.BatchNorm1d(2)([[1.0, 2.0], [3.0, 4.0]])


# ------------------------------------------------------------------ trailing shape


def test_layer_norm_wrong_trailing_shape():
    with pytest.raises(
        ValueError,
        match=re.escape(
            "layer_norm expected input with trailing dims [3, 5] (shape [*, 3, 5]), got input of shape [2, 5, 3]"
        ),
    ):
        nln.LayerNorm((3, 5))(_x(2, 5, 3))
    with pytest.raises(ValueError, match=re.escape("trailing dims [8]")):
        nln.LayerNorm(8)(_x(2, 7))


def test_rms_norm_wrong_trailing_shape():
    with pytest.raises(ValueError, match=re.escape("rms_norm expected input with trailing dims [8]")):
        nln.RMSNorm(8)(_x(2, 7))
    with pytest.raises(ValueError, match=re.escape("got input of shape [3]")):
        nln.RMSNorm((2, 3))(_x(3))


def test_functional_batch_norm_bad_buffers():
    x = _x(4, 3, 2, 2)
    with pytest.raises(
        ValueError,
        match=r"batch_norm expected running_mean of shape \(3,\) for input with 3 channels, "
        r"got \(4,\)",
    ):
        normlab.functional.batch_norm(x, torch.zeros(4), torch.ones(3), training=True)
    with pytest.raises(ValueError, match="training=False needs running_mean and running_var"):
        normlab.functional.batch_norm(x, None, None, training=False)


def test_channel_layer_norm_bad_weight():
    with pytest.raises(ValueError, match=r"channel_layer_norm expected weight of shape \(3,\), got \(4,\)"):
        normlab.functional.channel_layer_norm(_x(2, 3, 2, 2), torch.ones(4))


# ------------------------------------------------------------------ registry


def test_registry_unknown_name_lists_known_names():
    with pytest.raises(
        ValueError, match=r"unknown norm 'nosuchnorm'; known names and aliases: .*batchnorm2d.*"
    ) as info:
        normlab.create_norm("nosuchnorm", 8)
    message = str(info.value)
    for name in normlab.list_norms():
        assert name in message
    for alias in ("bn", "gn", "ln2d", "rms", "lrn"):
        assert re.search(rf"\b{alias}\b", message)
    with pytest.raises(ValueError, match="unknown norm 'nope'"):
        normlab.get_norm("nope")


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("gn:32,16", r"cannot parse '16' in norm spec 'gn:32,16': only the first argument may be positional"),
        ("bn:0.1", r"cannot parse '0.1' in norm spec 'bn:0.1'.*batchnorm2d's is none.*write key=value"),
        ("ln2d:1e-6", r"cannot parse '1e-6' in norm spec"),
        ("foo:32", r"unknown norm 'foo'"),
    ],
)
def test_registry_malformed_spec(spec, pattern):
    with pytest.raises(ValueError, match=pattern):
        normlab.create_norm(spec, 64)


@pytest.mark.parametrize("spec", ["", "   ", None, 3])
def test_registry_empty_or_non_string_spec(spec):
    with pytest.raises(
        TypeError, match="a norm spec must be a non-empty string|create_norm expected a norm name or spec string"
    ):
        normlab.create_norm(spec, 8)


def test_registry_unknown_keyword_is_a_type_error_naming_the_spec():
    with pytest.raises(TypeError, match=r"create_norm\('bn:nosuch=1', 8\):.*nosuch"):
        normlab.create_norm("bn:nosuch=1", 8)


def test_registry_missing_num_features():
    with pytest.raises(TypeError, match="norm 'batchnorm2d' needs num_features"):
        normlab.create_norm("bn")
