"""Drop-in normalization modules (torch.nn's contract), one file per family."""

from .batch import FUSER_METHOD_MAPPING, BatchNorm1d, BatchNorm2d, BatchNorm3d, fuse_modules, fuse_modules_qat
from .batch_variants import GhostBatchNorm
from .conditional import SPADE
from .layer import (
    ChannelLayerNorm,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
    LayerNorm2d,
    LayerNorm3d,
    RMSNorm,
)
from .local import LocalResponseNorm
from .mixture import SwitchableNorm
from .weight import WeightStandardization, remove_weight_standardization, weight_standardization
from .whitening import IterNorm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "ChannelLayerNorm",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "LayerNorm2d",
    "LayerNorm3d",
    "LocalResponseNorm",
    "RMSNorm",
    # batch-statistics variants, whitening, mixtures, conditional recovery
    "GhostBatchNorm",
    "IterNorm",
    "SwitchableNorm",
    "SPADE",
    # weight-side normalization (parametrizations)
    "WeightStandardization",
    "remove_weight_standardization",
    "weight_standardization",
    # torch.ao.quantization's fusers for models with normlab's BatchNorms
    "FUSER_METHOD_MAPPING",
    "fuse_modules",
    "fuse_modules_qat",
]
