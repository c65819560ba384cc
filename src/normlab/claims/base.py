"""The claim shape: a declarative header, one (config, seed) cell, a pure verdict over tidy rows, a plot.

A claim module defines a subclass of :class:`Claim` and reads top to bottom:

1. **The header**: ``id``, ``title``, ``source``, ``statement``; ``params``,
   a dict holding every number of the protocol and the rule once (sizes,
   learning rates, budgets, thresholds); ``quick``, the few ``params`` that
   quick mode overrides; ``protocol`` and ``rule``, texts with ``{name}``
   fields rendered from ``params`` (so the prose in the report cannot drift
   from the code); ``seeds`` (full-mode default) and ``min_seeds`` (fewer
   seeds, or quick mode, give ``inconclusive``: the runner applies that
   policy, the claim does not); ``data``, the built-in datasets it reads
   (fingerprinted in the run's record).
2. ``grid(p, seeds, rows)``: the cells to run. Called with ``rows=[]`` first,
   then again with every row so far until it returns no new cell, so a
   second stage can depend on the first (a learning rate tuned on a
   validation split, say). The default is one cell per seed; most claims
   return :func:`sweep` over a few axes.
3. ``cell(p, config)``: the experiment for one config (a dict with a
   ``seed``); returns one row or a list of rows (JSON-safe numbers). The
   runner adds the config's keys to each row, runs cells single-threaded,
   possibly in other processes: a cell must depend on nothing but ``p`` and
   its config (seed everything from ``config["seed"]``).
4. ``verdict(p, rows)``: the rule, a pure function of the rows, built from
   :class:`Part` (empirical, decided by a bootstrap interval over seeds
   against a threshold fixed in ``params``) and :class:`Check` (parts that
   follow from algebra: they fail only on a bug, reported apart), combined by
   :meth:`Verdict.combine`.
5. ``plot(p, rows, fig)``: the figure, on a matplotlib ``Figure``.

Shared pieces live here (:func:`sweep`, :func:`group`, :func:`per_seed`,
:func:`bootstrap_ci`, :func:`interval_part`) and in
:mod:`normlab.claims.recipes` (models, data, training runs). Rules are fixed
before a run and never tuned to results; a change is listed in
docs/claims.md under "changes to the contract".
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

Status = Literal["holds", "fails", "inconclusive"]
STATUSES: tuple[str, ...] = ("holds", "fails", "inconclusive")
CONFIDENCE = 0.95  # every interval in a verdict
BOOTSTRAP_RESAMPLES = 4000


# --------------------------------------------------------------------------- verdict pieces


@dataclass
class Part:
    """One empirical part of a rule: an estimate, its interval over seeds, the threshold, the outcome."""

    name: str
    status: Status
    text: str
    estimate: float = math.nan
    low: float = math.nan
    high: float = math.nan
    threshold: float | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "status": self.status,
            "text": self.text,
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "threshold": self.threshold,
        }


@dataclass
class Check:
    """A part of a rule that follows from algebra: it passes unless the code is wrong."""

    name: str
    passed: bool
    text: str

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": bool(self.passed), "text": self.text}


@dataclass
class Verdict:
    """The outcome of a claim's rule, with the numbers that decided it."""

    status: Status
    reason: str
    numbers: dict[str, float] = field(default_factory=dict)
    parts: list[Part] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"verdict status must be one of {STATUSES}, got {self.status!r}")

    @classmethod
    def combine(
        cls, parts: Sequence[Part], checks: Sequence[Check] = (), numbers: dict | None = None, note: str = ""
    ) -> Verdict:
        """A conjunctive rule: ``holds`` if every part holds, ``fails`` if any fails, else ``inconclusive``.

        A failed :class:`Check` makes the verdict ``fails`` too (it means a
        bug, and the reason says so first). ``note`` (reported, not judged)
        ends the reason.
        """
        parts, checks = list(parts), list(checks)
        if not parts and not checks:
            raise ValueError("a verdict needs at least one part or check")
        statuses = [p.status for p in parts]
        broken = [c for c in checks if not c.passed]
        if broken or "fails" in statuses:
            status: Status = "fails"
        elif all(s == "holds" for s in statuses):
            status = "holds"
        else:
            status = "inconclusive"
        pieces = [f"{p.status}: {p.text}" for p in parts]
        if broken:
            pieces.insert(0, "CHECK FAILED (a bug, not evidence): " + "; ".join(c.text for c in broken))
        elif checks:
            pieces.append(f"checks pass ({', '.join(c.name for c in checks)})")
        if note:
            pieces.append(note)
        return cls(status, "; ".join(pieces), dict(numbers or {}), parts, checks)

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "reason": self.reason,
            "numbers": self.numbers,
            "parts": [p.to_dict() for p in self.parts],
            "checks": [c.to_dict() for c in self.checks],
        }


# --------------------------------------------------------------------------- statistics over seeds


def finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def num(x) -> float:
    """A float from a row that may have been through JSON (non-finite floats are strings there)."""
    if x is None:
        return math.nan
    return float(x)


def bootstrap_ci(
    values: Sequence[float],
    stat: Callable[[Sequence[float]], float] = statistics.fmean,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(estimate, low, high)``: ``stat`` of ``values`` and its percentile-bootstrap interval over them.

    ``values`` are per-seed numbers (one per seed); a non-finite value makes
    everything nan (a diverged seed is decided by the rule, not dropped).
    The resampling RNG is seeded: the same values give the same interval.
    With one value the interval is that value (and the runner's seed policy
    makes such a verdict inconclusive anyway).
    """
    vals = [num(v) for v in values]
    if not vals or not all(math.isfinite(v) for v in vals):
        return math.nan, math.nan, math.nan
    est = float(stat(vals))
    if len(vals) == 1:
        return est, est, est
    rng = random.Random(seed)
    n = len(vals)
    boot = sorted(float(stat([vals[rng.randrange(n)] for _ in range(n)])) for _ in range(resamples))
    alpha = (1.0 - confidence) / 2
    lo = boot[min(resamples - 1, max(0, int(math.floor(alpha * resamples))))]
    hi = boot[min(resamples - 1, max(0, int(math.ceil((1 - alpha) * resamples)) - 1))]
    return est, lo, hi


def decide(low: float, high: float, threshold: float, op: str) -> Status:
    """``holds`` if the whole interval satisfies ``value op threshold``, ``fails`` if none of it does."""
    if op not in (">=", "<=", ">", "<"):
        raise ValueError(f"op must be one of '>=', '<=', '>', '<', got {op!r}")
    if not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    if op in (">=", ">"):
        ok = low >= threshold if op == ">=" else low > threshold
        bad = high < threshold if op == ">=" else high <= threshold
    else:
        ok = high <= threshold if op == "<=" else high < threshold
        bad = low > threshold if op == "<=" else low >= threshold
    return "holds" if ok else "fails" if bad else "inconclusive"


def interval_part(
    name: str,
    values: Sequence[float],
    op: str,
    threshold: float,
    what: str | None = None,
    stat: Callable[[Sequence[float]], float] = statistics.fmean,
    digits: int = 3,
    nonfinite: Status = "inconclusive",
) -> Part:
    """A :class:`Part` judging ``stat(values) op threshold`` by the bootstrap interval over seeds.

    ``values`` are per-seed; if any is non-finite the part's status is
    ``nonfinite`` (``fails`` where divergence itself breaks the rule).
    """
    est, lo, hi = bootstrap_ci(values, stat)
    label = what or name
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = sum(1 for v in values if not finite(v))
        return Part(name, nonfinite, f"{label}: {bad}/{len(values)} seeds non-finite (need {op} {threshold:g})")
    status = decide(lo, hi, threshold, op)
    text = f"{label} {fmt(est, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}] (need {op} {threshold:g})"
    return Part(name, status, text, est, lo, hi, threshold)


def band_part(
    name: str, values: Sequence[float], low: float, high: float, what: str | None = None, digits: int = 3
) -> Part:
    """A :class:`Part` judging ``low <= mean(values) <= high`` by the interval (both sides must hold)."""
    est, lo, hi = bootstrap_ci(values)
    label = what or name
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = sum(1 for v in values if not finite(v))
        return Part(name, "fails", f"{label}: {bad}/{len(values)} seeds non-finite (need in [{low:g}, {high:g}])")
    a, b = decide(lo, hi, low, ">="), decide(lo, hi, high, "<=")
    status: Status = "fails" if "fails" in (a, b) else "holds" if a == b == "holds" else "inconclusive"
    text = f"{label} {fmt(est, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}] (need in [{low:g}, {high:g}])"
    return Part(name, status, text, est, lo, hi, None)


def exact_part(name: str, passed: bool | None, text: str) -> Part:
    """A :class:`Part` with no interval (a deterministic measurement); ``None`` is inconclusive."""
    status: Status = "inconclusive" if passed is None else "holds" if passed else "fails"
    return Part(name, status, text)


# --------------------------------------------------------------------------- tidy rows


def sweep(seeds: Iterable[int], **axes: Iterable) -> list[dict]:
    """Every combination of ``axes`` (in the order given) times every seed, as configs.

    >>> sweep([0, 1], norm=("bn", "ln"))
    [{'norm': 'bn', 'seed': 0}, {'norm': 'bn', 'seed': 1}, {'norm': 'ln', 'seed': 0}, {'norm': 'ln', 'seed': 1}]
    """
    names = list(axes)
    seeds = list(seeds)
    out = []
    for values in itertools.product(*(list(axes[n]) for n in names)):
        for s in seeds:
            out.append({**dict(zip(names, values, strict=True)), "seed": s})
    return out


def select(rows: Iterable[dict], **where) -> list[dict]:
    """The rows whose keys equal ``where``'s values."""
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def group(rows: Iterable[dict], *by: str) -> dict[tuple, list[dict]]:
    """Rows grouped by the values of ``by`` (insertion order kept)."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r.get(k) for k in by), []).append(r)
    return out


def per_seed(rows: Iterable[dict], key: str | Callable[[dict], float]) -> list[float]:
    """One value per seed (rows sorted by seed): ``row[key]`` or ``key(row)``."""
    get = key if callable(key) else (lambda r: num(r[key]))
    return [get(r) for r in sorted(rows, key=lambda r: r["seed"])]


def paired(
    a: Iterable[dict], b: Iterable[dict], key: str | Callable[[dict], float], op=lambda x, y: x - y
) -> list[float]:
    """Per-seed ``op(a_value, b_value)`` over the seeds both groups have (a paired comparison)."""
    get = key if callable(key) else (lambda r: num(r[key]))
    av = {r["seed"]: get(r) for r in a}
    bv = {r["seed"]: get(r) for r in b}
    return [op(av[s], bv[s]) for s in sorted(av) if s in bv]


def seed_mean(rows: Iterable[dict], key: str | Callable[[dict], float]) -> float:
    """Mean over seeds (nan if any seed's value is non-finite)."""
    vals = per_seed(rows, key)
    return statistics.fmean(vals) if vals and all(math.isfinite(v) for v in vals) else math.nan


def fmt(x, digits: int = 3) -> str:
    v = num(x)
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else f"{v:.{digits}g}"


# --------------------------------------------------------------------------- the claim


class _Render(string.Formatter):
    """``str.format`` where a list or tuple renders as ``a, b, c`` (protocol texts list grids)."""

    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, (list, tuple)):
            return ", ".join(format(v, format_spec) for v in value)
        return format(value, format_spec)


def render(template: str, params: dict) -> str:
    """Fill ``template``'s ``{name}`` fields from ``params`` (a missing name is a KeyError)."""
    return _Render().format(template, **params)


class Claim:
    """Base class of every claim; see the module docstring for the shape."""

    id: ClassVar[str]
    title: ClassVar[str]
    source: ClassVar[str]
    statement: ClassVar[str]
    protocol: ClassVar[str]  # template over params
    rule: ClassVar[str]  # template over params
    params: ClassVar[dict] = {}
    quick: ClassVar[dict] = {}
    seeds: ClassVar[int] = 5
    min_seeds: ClassVar[int] = 5
    data: ClassVar[tuple[str, ...]] = ()

    def settings(self, quick: bool = False) -> dict:
        """The full ``params``, with ``quick``'s overrides in quick mode (an override of no param is an error)."""
        unknown = set(self.quick) - set(self.params)
        if unknown:
            raise KeyError(f"{self.id}: quick overrides {sorted(unknown)} are not params")
        return {**self.params, **(self.quick if quick else {})}

    def grid(self, p: dict, seeds: list[int], rows: list[dict]) -> list[dict]:
        """Cells to run given the rows so far (default: one cell per seed, once)."""
        return [] if rows else [{"seed": s} for s in seeds]

    def cell(self, p: dict, config: dict) -> dict | list[dict]:  # pragma: no cover - interface
        raise NotImplementedError

    def verdict(self, p: dict, rows: list[dict]) -> Verdict:  # pragma: no cover - interface
        raise NotImplementedError

    def plot(self, p: dict, rows: list[dict], fig) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self, quick: bool = False) -> dict:
        """Id, title, source, statement and the protocol and rule rendered from the settings."""
        p = self.settings(quick)
        return {
            "id": self.id,
            "title": self.title,
            "source": self.source,
            "statement": self.statement,
            "protocol": render(self.protocol, p),
            "rule": render(self.rule, p),
        }


@dataclass(frozen=True)
class PendingClaim:
    """A claim listed in CLAIMS.md that waits for a family normlab does not have yet."""

    id: str
    source: str
    statement: str
    needs: str


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (0 for one value) of the finite values; nan if none."""
    vals = [float(v) for v in values if v is not None and finite(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    num_ = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True))
    den = sum((a - mx) ** 2 for a in lx)
    return num_ / den
