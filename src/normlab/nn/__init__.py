"""Drop-in normalization modules (torch.nn's contract), one file per family."""

from .batch import BatchNorm1d, BatchNorm2d, BatchNorm3d
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

# --- new families: one import line each (helpers: replace your own marker line only)
# <import:batch_variants>
# <import:whitening>
# <import:mixture>
# <import:conditional>
# <import:weight>

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
    # <all:batch_variants>
    # <all:whitening>
    # <all:mixture>
    # <all:conditional>
    # <all:weight>
]
