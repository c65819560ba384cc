"""normlab's functional core: partition -> operation -> recovery, and the norms built on it.

- :mod:`.partition` (NAP): views ``(N, C, *spatial)`` as ``(R, D, M)``.
- :mod:`.operations` (NOP): centering, standardization (L2/L1/L-inf), RMS scaling,
  each an estimator (a typed statistic) then an apply function.
- :mod:`.recovery` (NRR): per-channel and per-element affine.
- :mod:`.stats`: typed statistics (``Moments``, ``Covariance``, ``Whitening``),
  their estimators (with a ``reduce=`` hook for synchronized statistics),
  windowed and masked estimators, apply functions, and the one running EMA.
- :mod:`.generic`: every standard norm as the plain composition (the oracle).
- :mod:`.norms`: the same norms by their fastest exact road (what modules call).
"""

from . import generic
from .checks import InputDTypeError
from .norms import (
    batch_norm,
    channel_layer_norm,
    group_norm,
    instance_norm,
    layer_norm,
    local_response_norm,
    rms_norm,
)
from .operations import (
    Normalized,
    Scale,
    apply_scale,
    apply_stats,
    center,
    estimate_scale,
    linf_constant,
    rms_scale,
    standardize,
)
from .partition import (
    BatchGroupPartition,
    BatchPartition,
    GroupPartition,
    InstancePartition,
    LayerPartition,
    Partition,
    PositionalPartition,
    SampleGroupCoupled,
)
from .recovery import channel_affine, element_affine, modulate
from .stats import (
    Covariance,
    Moments,
    Reduce,
    Whitening,
    apply_moments,
    apply_whitening,
    combine_row_moments,
    estimate_covariance,
    estimate_moments,
    masked_moments,
    moments,
    momentum_factor,
    row_moments,
    track_batch,
    update_running,
    update_running_stats,
    window_moments,
)

__all__ = [
    "Covariance",
    "Moments",
    "Scale",
    "apply_scale",
    "estimate_scale",
    "Reduce",
    "Whitening",
    "apply_moments",
    "apply_whitening",
    "estimate_covariance",
    "estimate_moments",
    "masked_moments",
    "modulate",
    "track_batch",
    "update_running",
    "window_moments",
    "BatchGroupPartition",
    "BatchPartition",
    "GroupPartition",
    "InputDTypeError",
    "InstancePartition",
    "LayerPartition",
    "Normalized",
    "Partition",
    "PositionalPartition",
    "SampleGroupCoupled",
    "apply_stats",
    "batch_norm",
    "center",
    "channel_affine",
    "channel_layer_norm",
    "combine_row_moments",
    "element_affine",
    "generic",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "linf_constant",
    "local_response_norm",
    "momentum_factor",
    "moments",
    "rms_norm",
    "rms_scale",
    "row_moments",
    "standardize",
    "update_running_stats",
]
