"""The base of batch-statistics norms that have no torch twin, and constructor validation.

:class:`RunningStatsNorm` holds, once, what torch's ``_NormBase`` holds for
BatchNorm: the constructor convention (``num_features`` first, then ``eps``,
``momentum``, ``affine``, ``track_running_stats``, ``device``, ``dtype``),
the ``weight``/``bias`` parameters, the ``running_*`` buffers and
``num_batches_tracked``, ``reset_parameters``/``reset_running_stats``,
``extra_repr``, a versioned ``state_dict`` and the one decision every such
norm makes: batch statistics or running statistics, and how much the new
batch weighs in the running average.

A subclass declares its running buffers (:meth:`RunningStatsNorm._running_buffers`:
name -> (shape, init)) in the order of its statistics type's
``running_values()`` (:mod:`normlab.functional.stats`). Its ``forward``
makes only Python-level decisions on module attributes and calls *one*
module-level function decorated with ``@torch.fx.wrap`` that receives every
tensor (input, buffers, parameters): ``torch.fx.symbolic_trace`` then records
that call as one node (validation and data-dependent branches inside it
stay out of the trace), ``torch.export``/``torch.compile`` trace through it::

    @torch.fx.wrap
    def _my_norm(input, running_mean, running_var, num_batches_tracked, weight, bias,
                 use_batch_stats: bool, update: bool, momentum, eps):
        check...(input)                     # validate first: a failed call changes nothing
        if use_batch_stats:
            stats = estimate(input)         # a Moments / Covariance / Whitening
            y = apply(input, stats)
            if update:                      # last: only once the output exists
                track_batch((running_mean, running_var), num_batches_tracked, stats, momentum)
        else:
            y = apply(input, (running_mean, running_var))
        return recovery(y, weight, bias)

    class MyNorm(RunningStatsNorm):
        def forward(self, input):
            return _my_norm(input, *self.running_buffers(), self.num_batches_tracked, self.weight,
                            self.bias, self.use_batch_stats(), self.updates_running(), self.momentum, self.eps)

It never subclasses torch's ``_BatchNorm``: torch's tools that look for that
class (``convert_sync_batchnorm``, fusers) would silently replace a normlab
norm by a plain BatchNorm. Its ``normlab_statistics = "batch"`` class
attribute is the protocol :func:`normlab.registry.statistics_kind` reads.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..functional.checks import check_eps, check_momentum, check_positive_int
from ..functional.stats import Statistics, track_batch

Init = Callable[[Tensor], object]

# The constructor validators live in normlab.functional.checks (functional code uses them too);
# re-exported here for the modules.
__all__ = ["RunningStatsNorm", "check_eps", "check_momentum", "check_positive_int"]


class RunningStatsNorm(nn.Module):
    """Base class of batch-statistics norms without a torch twin (see the module docs).

    Args:
        num_features: C, the channel dim (dim 1) of the input.
        eps: added to the variance (or the covariance's diagonal). Default: 1e-5.
        momentum: weight of the new batch in the running statistics (torch's
            form); ``None``: cumulative average. Default: 0.1.
        affine: learn a per-channel ``weight`` (init 1) and ``bias`` (init 0).
        track_running_stats: keep running statistics for eval mode; without
            them eval uses batch statistics too (as torch's BatchNorm).
    """

    _version = 2
    normlab_statistics = "batch"
    num_features: int
    eps: float
    momentum: float | None

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.num_features = check_positive_int(num_features, "num_features", owner)
        self.eps = check_eps(eps, owner)
        self.momentum = check_momentum(momentum, owner)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        factory = {"device": device, "dtype": dtype}
        if self.affine:
            shape = self._affine_shape()
            self.weight = nn.Parameter(torch.empty(shape, **factory))
            self.bias = nn.Parameter(torch.empty(shape, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        for name, (shape, _) in self._running_buffers().items():
            self.register_buffer(name, torch.empty(shape, **factory) if self.track_running_stats else None)
        if self.track_running_stats:
            self.register_buffer(
                "num_batches_tracked",
                torch.tensor(0, dtype=torch.long, **{k: v for k, v in factory.items() if k != "dtype"}),
            )
        else:
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    # -- what a subclass may override

    def _affine_shape(self) -> tuple[int, ...]:
        return (self.num_features,)

    def _running_buffers(self) -> dict[str, tuple[tuple[int, ...], Init]]:
        """Running buffers in the order of the statistics' ``running_values()``: name -> (shape, init)."""
        c = self.num_features
        return {"running_mean": ((c,), nn.init.zeros_), "running_var": ((c,), nn.init.ones_)}

    # -- torch's _NormBase contract

    def reset_running_stats(self) -> None:
        if not self.track_running_stats:
            return
        with torch.no_grad():
            for name, (_, init) in self._running_buffers().items():
                init(getattr(self, name))
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}"
        )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            # Checkpoints from before num_batches_tracked existed (as torch's _NormBase).
            state_dict[key] = (
                self.num_batches_tracked
                if self.num_batches_tracked is not None and self.num_batches_tracked.device != torch.device("meta")
                else torch.tensor(0, dtype=torch.long)
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors)

    # -- the statistics source, decided once

    def use_batch_stats(self) -> bool:
        """Batch statistics in training, and in eval when there are no running statistics."""
        return self.training or not self.track_running_stats

    def updates_running(self) -> bool:
        """Whether this forward folds its batch statistics into the running buffers."""
        return self.training and self.track_running_stats

    def running_buffers(self) -> tuple[Tensor | None, ...]:
        """The running buffers in the order of the statistics' ``running_values()`` (None when not tracked)."""
        return tuple(getattr(self, name) for name in self._running_buffers())

    def update_running(self, stats: Statistics) -> None:
        """Count the batch and fold ``stats`` into the running buffers (training with tracking only).

        Call it after the output has been computed, so that a forward that
        raises leaves the running statistics untouched.
        """
        if self.updates_running():
            track_batch(self.running_buffers(), self.num_batches_tracked, stats, self.momentum)
