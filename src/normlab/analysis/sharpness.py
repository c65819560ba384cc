r"""Sharpness tracking: the top Hessian eigenvalue along training (edge of stability).

Cohen et al. (2021, "Gradient Descent on Neural Networks Typically Occurs at
the Edge of Stability") observe that under full-batch gradient descent with
step size ``eta`` the sharpness ``lambda_max(H)`` rises until it reaches
``2 / eta`` and then hovers there. :class:`SharpnessTracker` measures it every
``k`` steps inside any training loop; :func:`plot_sharpness` draws it with the
``2 / eta`` line.

Each measurement is warm-started from the previous top eigenvector, which
barely moves between nearby steps, so it costs a fraction of a cold start.
The model is left exactly as it was (training flags, parameters, buffers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._common import BNMode, LossFn
from .hessian import HessianOperator, _new_axes

__all__ = ["SharpnessRecord", "SharpnessTracker", "plot_sharpness"]


@dataclass
class SharpnessRecord:
    """One measurement: the training step, ``lambda_max``, the HVPs it cost, the loss at that point.

    ``loss`` is the loss over the tracker's data in its ``bn_mode`` (a
    by-product of the HVPs' forward passes, not the training loss of the step).
    """

    step: int
    lambda_max: float
    num_hvp: int
    converged: bool
    loss: float


class SharpnessTracker:
    r"""Record the top Hessian eigenvalue every ``every`` steps of any training loop.

    ``data`` is fixed at construction (an iterator is consumed once): for the
    edge-of-stability picture use the full training set or a fixed subset.
    ``bn_mode`` is required, as for every analysis tool (``"train"``: the
    training loss with batch statistics; ``"eval"``: the inference function;
    see :func:`~normlab.analysis.set_bn_mode`). ``method``, ``tol`` and
    ``max_iter`` go to :func:`~normlab.analysis.top_eigenvalues`. With
    ``warm_start`` (default) each measurement starts from the previous top
    eigenvector.

    Call :meth:`step` (or the tracker itself) with the step index once per
    step; it measures when ``step_index % every == 0`` and returns the new
    :class:`SharpnessRecord` (else ``None``). Where in the step you call it
    decides which parameters are measured: before ``optimizer.step()`` it is
    the point the step's gradient was taken at.

    Example::

        >>> import torch
        >>> from normlab.analysis import SharpnessTracker
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        >>> x, y = torch.randn(64, 4), torch.randn(64, 1)
        >>> loss_fn = torch.nn.functional.mse_loss
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> tracker = SharpnessTracker(model, loss_fn, (x, y), every=5, bn_mode="train")
        >>> for step in range(20):
        ...     _ = tracker.step(step)  # a SharpnessRecord every 5 steps, else None
        ...     opt.zero_grad()
        ...     loss_fn(model(x), y).backward()
        ...     opt.step()
        >>> [r.step for r in tracker.records]
        [0, 5, 10, 15]
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data,
        *,
        every: int = 1,
        bn_mode: BNMode,
        method: str = "lanczos",
        tol: float = 1e-4,
        max_iter: int | None = None,
        warm_start: bool = True,
        params: Sequence[Tensor] | None = None,
        seed: int | None = 0,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer (measure every k steps), got {every!r}")
        if method not in ("lanczos", "power"):
            raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")
        self.operator = HessianOperator(model, loss_fn, data, bn_mode=bn_mode, params=params)
        self.every = every
        self.method = method
        self.tol = tol
        self.max_iter = max_iter
        self.warm_start = warm_start
        self.records: list[SharpnessRecord] = []
        self.eigenvector: Tensor | None = None  # the last top eigenvector (flat), the next warm start
        self._generator = torch.Generator()
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(int(seed))

    def __repr__(self) -> str:
        return f"SharpnessTracker(every={self.every}, method={self.method!r}, records={len(self.records)})"

    def step(self, step_index: int) -> SharpnessRecord | None:
        """Measure if ``step_index % every == 0``; returns the new record or ``None``."""
        if isinstance(step_index, bool) or not isinstance(step_index, int):
            raise TypeError(f"step_index must be an int, got {type(step_index).__name__}")
        if step_index % self.every:
            return None
        return self.measure(step_index)

    __call__ = step

    def measure(self, step_index: int) -> SharpnessRecord:
        """Measure now, whatever the step, and record it under ``step_index``."""
        init = self.eigenvector if self.warm_start else None
        res = self.operator.top_eigenvalues(
            1, method=self.method, tol=self.tol, max_iter=self.max_iter, init=init, generator=self._generator
        )
        self.eigenvector = res.eigenvectors[0].detach().clone()
        rec = SharpnessRecord(
            step=int(step_index),
            lambda_max=float(res.eigenvalues[0]),
            num_hvp=res.num_hvp,
            converged=res.converged,
            loss=float(self.operator.last_loss),
        )
        self.records.append(rec)
        return rec

    @property
    def steps(self) -> list[int]:
        return [r.step for r in self.records]

    @property
    def values(self) -> list[float]:
        """``lambda_max`` of every record, in order."""
        return [r.lambda_max for r in self.records]

    @property
    def total_hvp(self) -> int:
        return sum(r.num_hvp for r in self.records)


def plot_sharpness(tracker: SharpnessTracker | Sequence[SharpnessRecord], lr: float | None = None, ax=None):
    """Plot ``lambda_max`` against the step; with ``lr``, the stability threshold ``2 / lr`` as a dashed line.

    Takes a tracker or its list of records. Draws into ``ax`` if given, else
    on a new figure; returns the ``matplotlib.figure.Figure`` (no pyplot
    state, no ``show``).
    """
    records = tracker.records if isinstance(tracker, SharpnessTracker) else list(tracker)
    if not all(isinstance(r, SharpnessRecord) for r in records):
        raise TypeError("expected a SharpnessTracker or a sequence of SharpnessRecord")
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    ax = _new_axes(ax)
    ax.plot([r.step for r in records], [r.lambda_max for r in records], "o-", ms=3, label=r"$\lambda_{max}$")
    if lr is not None:
        ax.axhline(2.0 / lr, ls="--", color="k", label=rf"$2/\eta$ = {2.0 / lr:.3g}")
    ax.set_xlabel("step")
    ax.set_ylabel("sharpness")
    ax.set_title("top Hessian eigenvalue")
    ax.legend()
    return ax.figure
