"""Small helpers for the training-dynamics claims (bn-speed, noisy-bn, bn-smoothness, edge-of-stability,
hessian-outliers, wd-effective-lr, tent).

Private to ``normlab.claims``; nothing here decides a verdict.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Iterator, Sequence

import torch

MIN_SEEDS = 3  # a verdict that goes into the report needs at least this many seeds (CLAIMS.md: full mode)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread for the experiment (the machine is shared), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def num(x) -> float:
    """A float from evidence that may have been through JSON (non-finite floats are strings there)."""
    if x is None:
        return math.nan
    return float(x)


def finite(x) -> bool:
    return math.isfinite(num(x))


def nanmean(values: Sequence) -> float:
    """Mean of the finite values (nan if there are none)."""
    vals = [num(v) for v in values if finite(v)]
    return statistics.fmean(vals) if vals else math.nan


def nanmedian(values: Sequence) -> float:
    vals = [num(v) for v in values if finite(v)]
    return statistics.median(vals) if vals else math.nan


def nanstd(values: Sequence) -> float:
    vals = [num(v) for v in values if finite(v)]
    return statistics.stdev(vals) if len(vals) > 1 else 0.0 if vals else math.nan


def mean_curve(curves: Sequence[Sequence], fill: float = math.nan) -> list[float]:
    """Element-wise mean of curves; a curve shorter than the longest is padded with ``fill``, nan counts as ``fill``.

    Used for accuracy curves of runs that diverged (stopped early): ``fill`` is then chance accuracy.
    """
    if not curves:
        return []
    n = max(len(c) for c in curves)
    out = []
    for i in range(n):
        vals = [num(c[i]) if i < len(c) and finite(c[i]) else fill for c in curves]
        out.append(nanmean(vals))
    return out


def seeds_caveat(n_seeds: int) -> str:
    """The reason suffix for a verdict downgraded to inconclusive for lack of seeds ('' if enough)."""
    if n_seeds >= MIN_SEEDS:
        return ""
    return f"only {n_seeds} seed(s), the rule needs >= {MIN_SEEDS} (quick run)"


def fmt(x, digits: int = 3) -> str:
    v = num(x)
    return "nan" if not math.isfinite(v) else f"{v:.{digits}g}"
