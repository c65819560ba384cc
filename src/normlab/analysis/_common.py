"""Shared plumbing of the analysis tools: data, loss, model state.

Every tool takes ``data`` as one batch ``(inputs, targets)`` or an iterable of
such batches; losses over an iterable are averaged with weights proportional
to batch size, so they equal the loss of the concatenated data for a
mean-reduced loss. Every tool leaves the model exactly as it found it
(training flags, parameters, buffers such as running statistics).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import torch
from torch import Tensor, nn

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


def uses_batch_statistics(module: nn.Module) -> bool:
    """Modules whose output depends on batch statistics in training mode."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def set_bn_mode(model: nn.Module, bn_mode: BNMode) -> None:
    """``"train"``: the training loss (batch statistics), ``"eval"``: the inference function.

    Everything except batch-statistics norms is put in eval mode in both
    cases, so dropout and the like do not make the function random.
    """
    if bn_mode not in ("train", "eval"):
        raise ValueError(f"bn_mode must be 'train' (batch statistics) or 'eval' (running statistics), got {bn_mode!r}")
    model.eval()
    if bn_mode == "train":
        for m in model.modules():
            if uses_batch_statistics(m):
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
