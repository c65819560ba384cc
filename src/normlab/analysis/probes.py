"""Probes: per-layer activation and gradient statistics at chosen steps of a training run.

:class:`ActivationProbe` hooks the chosen layers of any model. On a recorded
step each call of a layer stores four numbers about its output ``y`` (the
whole batch's output tensor of that call):

- ``norm = ||y||_2`` (Frobenius norm over all elements),
- ``mean`` and ``var`` (biased) over all elements,
- ``grad_norm = ||dloss/dy||_2``, filled in when the backward pass reaches ``y``
  (``nan`` if no backward ran, e.g. under ``no_grad`` or for eval batches).

Per-example RMS is ``sqrt(mean^2 + var)``; ``norm`` grows like
``sqrt(batch size)``. Calls whose output is not a tensor (e.g. an LSTM's
tuple) are not recorded.

Cost, so that probes can stay on for a whole run:

- on steps that are not recorded each hooked layer costs one Python call that
  returns at once (the flag check);
- on recorded steps each layer's statistics are two vectorized reductions
  on the detached output: the mean, then ``||y - mean||`` (centered, so no
  ``E[y^2] - E[y]^2`` cancellation; ``var = ||y - mean||^2 / n`` and
  ``norm^2 = ||y - mean||^2 + n mean^2`` follow without another pass).
  ``torch.var_mean`` would be a single pass but is a scalar loop on CPU,
  about 20x slower. The gradient norm is one reduction in a tensor hook.
  Results stay detached 0-d tensors (nothing keeps a graph alive) until one
  ``torch.stack(...).tolist()`` moves them all to Python floats at the next
  :meth:`ActivationProbe.step` or when ``records`` is read: one device sync
  per step, not one ``.item()`` per number.

Steps: call ``probe.step(i)`` (or ``probe.step()`` to count up from 0) before a
step's forward pass; ``steps`` says which are recorded: ``None`` every step,
a set/iterable of ints, or a predicate ``step -> bool`` (e.g.
``lambda s: s % 100 == 0``).

Example::

    >>> import torch
    >>> from torch import nn
    >>> from normlab.analysis import ActivationProbe, plot_probes
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> with ActivationProbe(model, layers=[nn.Linear], steps=lambda s: s % 2 == 0) as probe:
    ...     for i in range(4):
    ...         _ = probe.step(i)
    ...         x, t = torch.randn(16, 4), torch.randint(0, 2, (16,))
    ...         loss = nn.functional.cross_entropy(model(x), t)
    ...         opt.zero_grad(); loss.backward(); opt.step()
    >>> sorted({r.step for r in probe.records}), sorted({r.layer for r in probe.records})
    ([0, 2], ['0', '3'])
    >>> probe.as_dict()["3"]["grad_norm"][0] > 0
    True
    >>> fig = plot_probes(probe)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._layers import select_layers

__all__ = ["ActivationProbe", "ProbeRecord", "plot_probes"]

STATS = ("norm", "mean", "var", "grad_norm")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass
class ProbeRecord:
    """One call of one layer on one recorded step."""

    step: int
    layer: str
    call: int  # 0 for the first call of the layer on this step, 1 for the second (weight sharing, accumulation)
    norm: float = math.nan
    mean: float = math.nan
    var: float = math.nan
    grad_norm: float = math.nan
    numel: int = 0


def _is_leaf(m: nn.Module) -> bool:
    return next(iter(m.children()), None) is None


class ActivationProbe:
    """Record per-layer activation norm/mean/variance and output-gradient norm on chosen steps.

    Args:
        model: any ``nn.Module``.
        layers: ``None`` (every leaf module: layers without submodules, so
            activations such as ``ReLU`` are included), a type or tuple of
            types, or a list of submodule names/modules.
        steps: ``None`` (record every step), an iterable of step numbers, or a
            predicate ``step -> bool``.

    Use as a context manager (hooks are removed on exit) or call
    :meth:`remove`. Hooks never change outputs or gradients.
    """

    def __init__(self, model: nn.Module, layers=None, steps=None) -> None:
        if steps is None:
            self._want: Callable[[int], bool] = lambda s: True
        elif callable(steps):
            self._want = steps
        elif isinstance(steps, Iterable) and not isinstance(steps, (str, bytes)):
            wanted = set()
            for s in steps:
                if isinstance(s, bool) or not isinstance(s, int):
                    raise TypeError(f"steps must hold ints, got {type(s).__name__}")
                wanted.add(s)
            self._want = wanted.__contains__
        else:
            raise TypeError(f"steps must be None, an iterable of ints or a predicate step -> bool, got {steps!r}")
        self.layers = select_layers(model, layers, _is_leaf, "leaf modules")
        self.current_step = 0
        self._active = bool(self._want(0))
        self._records: list[ProbeRecord] = []
        self._pending: list[tuple[ProbeRecord, str, Tensor]] = []  # (record, field, 0-d tensor) awaiting one tolist()
        self._calls: dict[str, int] = {}
        self._handles = [m.register_forward_hook(self._make_hook(name)) for name, m in self.layers]

    # -- recording -------------------------------------------------------------------------------

    def _make_hook(self, name: str):
        def hook(module, inputs, output):
            if not self._active or not isinstance(output, Tensor):
                return None
            call = self._calls.get(name, 0)
            self._calls[name] = call + 1
            rec = ProbeRecord(self.current_step, name, call, numel=output.numel())
            self._records.append(rec)
            # Detached: these ops build no graph (cheaper than entering no_grad).
            y = output.detach()
            if y.dtype in _LOW_PRECISION:
                y = y.float()  # statistics of half-precision activations in float32
            # Two vectorized passes: the mean, then the norm of y - mean (centered: no cancellation).
            # torch.var_mean would be one pass, but on CPU it is a scalar Welford loop, ~20x slower.
            mean = y.mean()
            self._pending.append((rec, "mean", mean))
            self._pending.append((rec, "_cnorm", torch.linalg.vector_norm(y - mean)))
            if output.requires_grad:

                def grad_hook(g: Tensor) -> None:
                    # One reduction, kept as a detached 0-d tensor (no graph, no device sync).
                    gd = g.detach()
                    acc = torch.float32 if gd.dtype in _LOW_PRECISION else None
                    self._pending.append((rec, "grad_norm", torch.linalg.vector_norm(gd, dtype=acc)))

                output.register_hook(grad_hook)
            return None

        return hook

    def _flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        ts = [t for _, _, t in pending]
        if len({(t.dtype, t.device) for t in ts}) > 1:
            ts = [t.to("cpu", torch.float64) for t in ts]
        values = torch.stack(ts).tolist()  # one host transfer (one sync) for everything recorded since the last flush
        touched = {}
        for (rec, key, _), v in zip(pending, values, strict=True):
            if key == "_cnorm":
                touched[id(rec)] = (rec, v)
            else:
                setattr(rec, key, v)
        for rec, cnorm in touched.values():
            # var = ||y - mean||^2 / n and ||y||^2 = ||y - mean||^2 + n mean^2: sums of non-negative terms.
            rec.var = cnorm * cnorm / rec.numel if rec.numel else math.nan
            rec.norm = math.sqrt(cnorm * cnorm + rec.numel * rec.mean * rec.mean)

    # -- public API --------------------------------------------------------------------------------

    def step(self, i: int | None = None) -> bool:
        """Mark the start of step ``i`` (default: the previous step + 1); returns whether it is recorded."""
        if i is None:
            i = self.current_step + 1
        elif isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"step must be an int, got {type(i).__name__}")
        self._flush()
        self.current_step = i
        self._calls = {}
        self._active = bool(self._want(i))
        return self._active

    @property
    def recording(self) -> bool:
        return self._active

    @property
    def records(self) -> list[ProbeRecord]:
        """Every recorded (step, layer, call), in the order the calls happened."""
        self._flush()
        return list(self._records)

    def as_dict(self) -> dict[str, dict[str, list]]:
        """``{layer: {"step": [...], "call": [...], "norm": [...], "mean": ..., "var": ..., "grad_norm": ...}}``."""
        out: dict[str, dict[str, list]] = {}
        for r in self.records:
            d = out.setdefault(r.layer, {k: [] for k in ("step", "call", *STATS)})
            d["step"].append(r.step)
            d["call"].append(r.call)
            for k in STATS:
                d[k].append(getattr(r, k))
        return out

    def clear(self) -> None:
        """Forget the records (hooks stay)."""
        self._flush()
        self._records = []

    def remove(self) -> None:
        """Remove every hook this probe added (idempotent); the records stay readable."""
        self._flush()
        for h in self._handles:
            h.remove()
        self._handles = []
        self._active = False

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> ActivationProbe:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return (
            f"ActivationProbe(layers={[n for n, _ in self.layers]}, step={self.current_step}, attached={self.attached})"
        )


def plot_probes(probe, stats: tuple[str, ...] = ("norm", "var", "grad_norm"), logy: bool = True):
    """One panel per statistic, one line per layer against the step (first call of each layer per step).

    ``probe`` is an :class:`ActivationProbe` or a list of :class:`ProbeRecord`.
    Returns a ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    records = probe.records if isinstance(probe, ActivationProbe) else list(probe)
    if any(not isinstance(r, ProbeRecord) for r in records):
        raise TypeError("expected an ActivationProbe or a list of ProbeRecord")
    for s in stats:
        if s not in STATS:
            raise ValueError(f"unknown statistic {s!r}; choose from {STATS}")
    fig = Figure(figsize=(4.2 * len(stats), 3.6), layout="constrained")
    axes = fig.subplots(1, len(stats), squeeze=False)[0]
    layers = list(dict.fromkeys(r.layer for r in records))
    for ax, s in zip(axes, stats, strict=False):
        for layer in layers:
            pts = [(r.step, getattr(r, s)) for r in records if r.layer == layer and r.call == 0]
            pts = [(x, y) for x, y in pts if not math.isnan(y)]
            if pts:
                xs, ys = zip(*pts, strict=False)
                ax.plot(xs, ys, marker=".", label=layer)
        if logy and s != "mean":
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(s)
    if layers:
        axes[0].legend(fontsize="small")
    return fig
