"""Gradient-side normalization: LARS, LAMB, LANS, and gradient centralization / normalization around any optimizer.

:class:`LARS` normalizes each layer's step by its trust ratio, :class:`LAMB`
Adam's step by the layer's norm, :class:`LANS` adds normalized gradients;
:class:`GradientCentralization` projects each filter's gradient onto zero
mean (:class:`CentralizedSGD` and :class:`CentralizedAdamW`: torch's SGD and
AdamW with it built in, in the paper's order) and :class:`GradientNormalization` rescales each gradient to unit norm
before any optimizer's step; :func:`exclude_from_adaptation` builds the
param groups that keep biases and norm parameters out. The functional core
(:mod:`normlab.optim.functional`) holds the math, with single-tensor and
``foreach`` implementations.

>>> import torch, normlab
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
>>> opt = normlab.optim.LARS(normlab.optim.exclude_from_adaptation(model), lr=1.0, weight_decay=5e-4)
>>> model(torch.randn(16, 8)).square().mean().backward()
>>> opt.step()
"""

from . import functional
from .optimizers import (
    LAMB,
    LANS,
    LARS,
    CentralizedAdamW,
    CentralizedSGD,
    GradientCentralization,
    GradientNormalization,
    exclude_from_adaptation,
)

__all__ = [
    "LAMB",
    "LANS",
    "LARS",
    "CentralizedAdamW",
    "CentralizedSGD",
    "GradientCentralization",
    "GradientNormalization",
    "exclude_from_adaptation",
    "functional",
]
