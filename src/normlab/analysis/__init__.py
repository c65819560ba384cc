"""Instruments that explain why normalization helps (see docs/analysis.md).

Every tool takes a model, a loss and data (one batch ``(inputs, targets)`` or
an iterable of batches), leaves the model as it found it, returns plain
dataclasses of tensors and floats, and has a plotting helper returning a
``matplotlib.figure.Figure``. Every tool that evaluates the model takes a
required ``bn_mode`` keyword, ``"train"`` (the training function) or
``"eval"`` (the inference function), applied by :func:`set_bn_mode`.
"""

from ._common import set_bn_mode

# conditioning, probes, landscape, stochasticity, scale
from .conditioning import (
    ConditioningResult,
    LayerConditioning,
    Spectrum,
    layer_covariances,
    least_squares_hessian_condition,
    plot_spectra,
)
from .hessian import (
    ExtremeEigenvalues,
    HessianOperator,
    SpectralDensity,
    TopEigenvalues,
    TraceEstimate,
    extreme_eigenvalues,
    hutchinson_trace,
    hvp,
    plot_density,
    plot_eigenvalues,
    spectral_density,
    top_eigenvalues,
)
from .landscape import ICSResult, LandscapeResult, internal_covariate_shift, loss_landscape, plot_ics, plot_landscape
from .probes import ActivationProbe, ProbeRecord, plot_probes
from .scale import EffectiveLRTracker, ScaleInvarianceResult, ScaleRecord, plot_effective_lr, scale_invariance
from .sharpness import SharpnessRecord, SharpnessTracker, plot_sharpness
from .stochasticity import SNDResult, SNDSweep, plot_snd, snd, snd_sweep

__all__ = [
    "set_bn_mode",
    # hessian, sharpness
    "ExtremeEigenvalues",
    "HessianOperator",
    "SpectralDensity",
    "TopEigenvalues",
    "TraceEstimate",
    "extreme_eigenvalues",
    "hutchinson_trace",
    "hvp",
    "plot_density",
    "plot_eigenvalues",
    "spectral_density",
    "top_eigenvalues",
    "SharpnessRecord",
    "SharpnessTracker",
    "plot_sharpness",
    # conditioning, probes, landscape, stochasticity, scale
    "ActivationProbe",
    "ConditioningResult",
    "EffectiveLRTracker",
    "ICSResult",
    "LandscapeResult",
    "LayerConditioning",
    "ProbeRecord",
    "SNDResult",
    "ScaleInvarianceResult",
    "ScaleRecord",
    "SNDSweep",
    "Spectrum",
    "internal_covariate_shift",
    "layer_covariances",
    "least_squares_hessian_condition",
    "loss_landscape",
    "plot_effective_lr",
    "plot_ics",
    "plot_landscape",
    "plot_probes",
    "plot_snd",
    "plot_spectra",
    "scale_invariance",
    "snd",
    "snd_sweep",
]
