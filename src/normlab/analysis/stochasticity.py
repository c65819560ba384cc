"""Stochasticity: the stochastic normalization disturbance (SND) of a normalization module.

A batch-statistics norm normalizes an example with statistics that depend on
the other examples of its mini-batch, so the same example comes out
differently in different batches: noise that regularizes, and that hurts
when batches are small. Huang et al. ("An Investigation into the
Stochasticity of Batch Whitening", CVPR 2020) measure it by the SND of a
sample ``x`` for batch size ``m``:

    SND(x; m) = (1/s) sum_i || y_i - (1/s) sum_j y_j ||_2,
    y_i = NORM([x; B_i])[0],   B_i = m - 1 companion examples drawn from the data,

i.e. the mean distance of ``x``'s normalized output over ``s`` random batches
to their mean output. The norm runs in training mode (batch statistics); its
running statistics and training flag are restored afterwards, and nothing is
differentiated.

Conventions:

- The distance is the plain Euclidean norm of one example's whole output
  (the paper's definition), **not** divided by the output size; pass
  ``per_element=True`` to divide by ``sqrt(numel)`` (an RMS per element,
  comparable across widths and resolutions).
- Companions are drawn without replacement within a batch, independently
  across the ``s`` draws. :func:`snd` does not know whether ``x`` is itself in
  the pool; :func:`snd_sweep` holds its probe samples out of the pool.
- Distances are taken in float64 relative to the first draw's output
  (``y_i - y_0``), so a per-sample norm (LayerNorm, GroupNorm,
  InstanceNorm), whose output cannot depend on the companions, has SND exactly 0.

For BatchNorm the batch mean and variance fluctuate like ``m^(-1/2)``, so the
SND falls like ``m^(-1/2)`` (slope -1/2 on a log-log plot).

Example::

    >>> import torch
    >>> from torch import nn
    >>> from normlab.analysis import snd, snd_sweep, plot_snd
    >>> data = torch.randn(2048, 16, generator=torch.Generator().manual_seed(0))
    >>> r = snd(nn.BatchNorm1d(16), data[0], data[1:], batch_size=32, num_batches=50, generator=0)
    >>> 0 < r.value < 1
    True
    >>> snd(nn.LayerNorm(16), data[0], data[1:], batch_size=32, num_batches=10, generator=0).value
    0.0
    >>> sweep = snd_sweep(lambda g: nn.BatchNorm1d(16), data, batch_sizes=[16, 64, 256], num_batches=30, generator=0)
    >>> -0.6 < sweep.slope() < -0.4
    True
    >>> fig = plot_snd(sweep)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ._common import preserved_state

__all__ = ["SNDResult", "SNDSweep", "plot_snd", "snd", "snd_sweep"]

Sampler = Callable[[int, torch.Generator | None], Tensor]


@dataclass
class SNDResult:
    value: float  # mean distance to the mean output
    distances: Tensor  # (s,) float64, one per draw
    batch_size: int
    num_batches: int
    per_element: bool = False

    @property
    def stderr(self) -> float:
        """Standard error of ``value`` over the draws (the draws share the mean output: a rough guide)."""
        s = self.distances.numel()
        return float(self.distances.std() / math.sqrt(s)) if s > 1 else math.nan


@dataclass
class SNDSweep:
    batch_sizes: list[int]
    group_sizes: list  # the values passed to the factory (None for "no group size")
    snd: Tensor  # (len(group_sizes), len(batch_sizes)): mean over the probe samples
    stderr: Tensor  # same shape: standard error over the probe samples
    num_batches: int
    num_samples: int
    info: dict = field(default_factory=dict)

    def slope(self, group: int = 0) -> float:
        """Least-squares slope of ``log SND`` against ``log batch size`` for one group size (by index)."""
        y = self.snd[group]
        keep = y > 0
        if int(keep.sum()) < 2:
            return math.nan
        lx = torch.log(torch.tensor(self.batch_sizes, dtype=torch.float64)[keep])
        ly = torch.log(y[keep])
        lx = lx - lx.mean()
        return float((lx * (ly - ly.mean())).sum() / (lx * lx).sum())


def _generator(generator) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")


def _pool(data) -> Tensor | Sampler:
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        data = data[0]  # (inputs, targets): companions come from the inputs
    if isinstance(data, Tensor):
        if data.dim() < 2:
            raise ValueError(
                f"expected the companion data as a tensor (num_examples, *sample_shape), got shape {tuple(data.shape)}"
            )
        return data
    if callable(data):
        return data
    raise TypeError(
        "data must be a tensor of examples (M, *sample_shape), an (inputs, targets) pair, "
        f"or a sampler (n, generator) -> tensor (n, *sample_shape); got {type(data).__name__}"
    )


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _draw(pool: Tensor | Sampler, n: int, g: torch.Generator | None) -> Tensor:
    if isinstance(pool, Tensor):
        idx = torch.randperm(pool.shape[0], generator=g)[:n]
        return pool[idx.to(pool.device)]
    out = pool(n, g)
    if not isinstance(out, Tensor) or out.shape[0] != n:
        raise ValueError(
            f"the sampler must return a tensor with {n} examples, got "
            f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}"
        )
    return out


def snd(
    norm_module: nn.Module,
    x: Tensor,
    data,
    batch_size: int,
    num_batches: int = 100,
    *,
    generator=None,
    per_element: bool = False,
) -> SNDResult:
    """The stochastic normalization disturbance of ``norm_module`` for the sample ``x``.

    Args:
        norm_module: any module normalizing a batch ``(m, *sample_shape)``
            (run in training mode; its state is restored).
        x: one example, shape ``sample_shape`` or ``(1, *sample_shape)``.
        data: the companion pool ``(M, *sample_shape)`` (or ``(inputs, targets)``),
            or a sampler ``(n, generator) -> (n, *sample_shape)``.
        batch_size: ``m``, the batch ``x`` is normalized in (``x`` plus
            ``m - 1`` companions; ``m - 1 <= M``).
        num_batches: ``s >= 2`` random batches.
        generator: a ``torch.Generator``, an int seed, or ``None`` (global RNG).
        per_element: divide the distances by ``sqrt(numel of one output)``.
    """
    if not isinstance(norm_module, nn.Module):
        raise TypeError(f"expected norm_module to be a torch.nn.Module, got {type(norm_module).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"expected x to be a tensor (one example), got {type(x).__name__}")
    m = _check_int(batch_size, "batch_size", 1)
    s = _check_int(num_batches, "num_batches", 2)
    pool = _pool(data)
    g = _generator(generator)
    if isinstance(pool, Tensor):
        shape = tuple(pool.shape[1:])
        if m - 1 > pool.shape[0]:
            raise ValueError(f"batch_size {m} needs {m - 1} companions but the data has only {pool.shape[0]} examples")
        if tuple(x.shape) == shape:
            x = x.unsqueeze(0)
        elif tuple(x.shape) != (1, *shape):
            raise ValueError(
                f"x must be one example of shape {shape} (or (1, *shape)) like the data, got shape {tuple(x.shape)}"
            )
    elif x.dim() == 0:
        raise ValueError("x must be one example, got a scalar")
    else:
        probe = _draw(pool, 1, g)
        if tuple(x.shape) == tuple(probe.shape[1:]):
            x = x.unsqueeze(0)
        elif tuple(x.shape) != tuple(probe.shape):
            raise ValueError(
                f"x must be one example of shape {tuple(probe.shape[1:])} like the sampler's, "
                f"got shape {tuple(x.shape)}"
            )
    outs = []
    with preserved_state(norm_module), torch.no_grad():
        norm_module.train()
        for _ in range(s):
            comp = _draw(pool, m - 1, g).to(device=x.device, dtype=x.dtype)
            y = norm_module(torch.cat([x, comp], 0))
            if not isinstance(y, Tensor) or y.shape[0] != m:
                raise ValueError(f"norm_module must return a tensor with the batch's {m} examples first")
            outs.append(y[0].reshape(-1))
    Y = torch.stack(outs).to(torch.float64)
    # Relative to the first draw: identical outputs give exactly zero (and less cancellation).
    D = Y - Y[0]
    dist = torch.linalg.vector_norm(D - D.mean(0), dim=1)
    if per_element:
        dist = dist / math.sqrt(Y.shape[1])
    dist = dist.cpu()
    return SNDResult(float(dist.mean()), dist, m, s, per_element)


def snd_sweep(
    factory: Callable[[object], nn.Module],
    data: Tensor,
    batch_sizes: Sequence[int],
    group_sizes: Sequence = (None,),
    *,
    num_batches: int = 64,
    num_samples: int = 8,
    generator=None,
    per_element: bool = False,
) -> SNDSweep:
    """SND for every (group size, batch size): ``factory(group_size)`` builds the norm.

    ``num_samples`` probe examples are drawn from ``data`` (a tensor
    ``(M, *sample_shape)`` or ``(inputs, targets)``) and held out of the
    companion pool; the SND is averaged over them (the same probes for every
    configuration). ``group_sizes=(None,)`` calls ``factory(None)`` once (a
    norm without a group size). Returns :class:`SNDSweep`; ``.slope()`` fits
    the log-log slope.
    """
    if not callable(factory):
        raise TypeError(f"factory must be callable group_size -> nn.Module, got {type(factory).__name__}")
    pool = _pool(data)
    if not isinstance(pool, Tensor):
        raise TypeError("snd_sweep needs the data as a tensor (its probe samples are held out of the pool)")
    bs = [_check_int(b, "each batch size", 1) for b in batch_sizes]
    if not bs:
        raise ValueError("batch_sizes is empty")
    groups = list(group_sizes)
    if not groups:
        raise ValueError("group_sizes is empty: pass (None,) for a norm without a group size")
    k = _check_int(num_samples, "num_samples", 1)
    g = _generator(generator)
    if pool.shape[0] - k < max(bs) - 1:
        raise ValueError(
            f"data has {pool.shape[0]} examples: too few for {k} probe samples plus {max(bs) - 1} companions"
        )
    perm = torch.randperm(pool.shape[0], generator=g).to(pool.device)
    probes, companions = pool[perm[:k]], pool[perm[k:]]
    values = torch.empty(len(groups), len(bs), dtype=torch.float64)
    errs = torch.empty_like(values)
    for gi, group in enumerate(groups):
        module = factory(group)
        if not isinstance(module, nn.Module):
            raise TypeError(f"factory({group!r}) returned {type(module).__name__}, expected an nn.Module")
        for bi, m in enumerate(bs):
            v = torch.tensor(
                [
                    snd(module, probes[j], companions, m, num_batches, generator=g, per_element=per_element).value
                    for j in range(k)
                ],
                dtype=torch.float64,
            )
            values[gi, bi] = v.mean()
            errs[gi, bi] = v.std() / math.sqrt(k) if k > 1 else math.nan
    return SNDSweep(bs, groups, values, errs, num_batches, k, {"per_element": per_element})


def plot_snd(sweep: SNDSweep, reference_slope: float | None = -0.5):
    """SND against batch size (log-log), one line per group size, with a ``m^slope`` reference line.

    Returns a ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    if not isinstance(sweep, SNDSweep):
        raise TypeError(f"expected an SNDSweep, got {type(sweep).__name__}")
    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    xs = sweep.batch_sizes
    for gi, group in enumerate(sweep.group_sizes):
        y = sweep.snd[gi].numpy()
        label = "SND" if group is None else f"group size {group}"
        ax.errorbar(xs, y, yerr=sweep.stderr[gi].numpy(), marker="o", capsize=2, label=label)
    if reference_slope is not None and float(sweep.snd[0, 0]) > 0:
        ref = [float(sweep.snd[0, 0]) * (m / xs[0]) ** reference_slope for m in xs]
        ax.plot(xs, ref, "k--", lw=0.8, label=f"m^{reference_slope:g}")
    ax.set_xscale("log")
    if bool((sweep.snd > 0).all()):
        ax.set_yscale("log")
    ax.set_xlabel("batch size m")
    ax.set_ylabel("SND" + (" per element" if sweep.info.get("per_element") else ""))
    ax.legend(fontsize="small")
    return fig
