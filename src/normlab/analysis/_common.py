"""Shared plumbing of the analysis tools: data, loss, model state.

Every tool takes ``data`` as one batch ``(inputs, targets)`` or an iterable of
such batches; losses over an iterable are averaged with weights proportional
to batch size, so they equal the loss of the concatenated data for a
mean-reduced loss. Every tool leaves the model exactly as it found it
(training flags, parameters, buffers such as running statistics).

``bn_mode`` is one convention for every tool that evaluates a model (the
Hessian tools, the sharpness tracker, conditioning, landscape, internal
covariate shift, scale invariance): a **required keyword** (there is no
silent default: the training and the inference function of a model with
batch statistics are different functions), validated by one function,
:func:`check_bn_mode`, with one message, and applied by one function,
:func:`set_bn_mode`:

- ``"train"``: the training function; the modules that
  :func:`normlab.registry.mode_dependent` reports (batch-statistics norms,
  per-sample norms with running statistics, user modules declaring
  ``normlab_statistics = "batch"``) run in train mode, everything else in
  eval mode (dropout off);
- ``"eval"``: the inference function, the whole model in eval mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import torch
from torch import Tensor, nn

from ..functional.checks import InvalidArgumentError
from ..registry import mode_dependent

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
BNMode = Literal["train", "eval"]


def as_batches(data) -> list[Batch]:
    """Normalize ``data`` to a list of ``(inputs, targets)`` batches."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return [tuple(data)]
    if isinstance(data, Iterable):
        batches = []
        for i, b in enumerate(data):
            if not (isinstance(b, (tuple, list)) and len(b) >= 2 and isinstance(b[0], Tensor)):
                raise TypeError(f"batch {i}: expected (inputs, targets), got {type(b).__name__}")
            batches.append((b[0], b[1]))
        if not batches:
            raise ValueError("data is empty: expected at least one (inputs, targets) batch")
        return batches
    raise TypeError(f"expected data as (inputs, targets) or an iterable of them, got {type(data).__name__}")


def batch_weights(batches: list[Batch]) -> list[float]:
    sizes = [b[0].shape[0] for b in batches]
    total = sum(sizes)
    return [s / total for s in sizes]


BN_MODES = ("train", "eval")


def check_bn_mode(bn_mode) -> None:
    """Validate ``bn_mode`` (the one check, and the one message, of every analysis tool)."""
    if not (isinstance(bn_mode, str) and bn_mode in BN_MODES):
        raise InvalidArgumentError(
            "bn_mode must be 'train' (the training function: batch-statistics norms normalize with the batch's "
            "own statistics) or 'eval' (the inference function: they use their running statistics), "
            f"got {bn_mode!r}; pass bn_mode='train' or bn_mode='eval' explicitly"
        )


def set_bn_mode(model: nn.Module, bn_mode: BNMode) -> None:
    """Put ``model`` in the mode that makes it compute the function ``bn_mode`` names.

    - ``"train"``: the **training function**. Every module for which
      :func:`normlab.registry.mode_dependent` is true (batch-statistics norms,
      per-sample norms that track running statistics, user modules declaring
      ``normlab_statistics = "batch"``) is put in train mode, together with
      its submodules (its training forward is one unit); every other module is
      in eval mode, so dropout and the like are off and the function is
      deterministic.
    - ``"eval"``: the **inference function**: the whole model in eval mode.

    Which modules follow ``bn_mode`` is decided by the registry (statistics
    kind), the ``normlab_statistics`` attribute, and torch's own norm classes,
    never by class names. Everything is validated before any flag changes,
    so a failed call (a bad ``bn_mode``, an invalid ``normlab_statistics``)
    leaves the model as it was. Training flags are the only thing changed:
    analysis tools restore them (and parameters and buffers) on exit.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> from normlab.analysis import set_bn_mode
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
        >>> set_bn_mode(model, "train")
        >>> [m.training for m in model]
        [False, True, False, False]
        >>> set_bn_mode(model, "eval")
        >>> any(m.training for m in model.modules())
        False
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected model to be a torch.nn.Module, got {type(model).__name__}")
    check_bn_mode(bn_mode)
    # Decide for every module first (mode_dependent raises on an invalid declaration), then flip flags.
    follow = [m for m in model.modules() if mode_dependent(m)] if bn_mode == "train" else []
    model.eval()
    for m in follow:
        m.train()


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Restore training flags, parameters and buffers on exit, whatever happened inside."""
    flags = {name: m.training for name, m in model.named_modules()}
    saved = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, Tensor)}
    try:
        yield
    finally:
        with torch.no_grad():
            for k, v in model.state_dict(keep_vars=True).items():
                if k in saved:
                    v.data.copy_(saved[k])
        for name, m in model.named_modules():
            m.training = flags[name]


def params_of(model: nn.Module, params: list[Tensor] | None = None) -> list[Tensor]:
    """The parameters an analysis differentiates with respect to (default: all trainable)."""
    ps = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    if not ps:
        raise ValueError("the model has no trainable parameters to analyze")
    return ps
