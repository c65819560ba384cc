"""The claim framework: a statement, a protocol, a verdict rule fixed in code.

A claim module defines a subclass of :class:`Claim` with its id, source,
statement, protocol and rule text, and three methods:

- ``run(ctx) -> dict``: the experiment; returns the *evidence* (plain numbers,
  lists and small nested dicts: JSON-safe), per seed where it has seeds;
- ``verdict(evidence) -> Verdict``: the rule, a pure function of the evidence,
  so it is unit-tested on synthetic evidence for both outcomes;
- ``plot(evidence, fig)``: draws the claim's figure on a matplotlib Figure.

Verdict rules are fixed before running and are never tuned to results; a
change is documented in the claim's module and the report.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

Status = Literal["holds", "fails", "inconclusive"]
STATUSES: tuple[str, ...] = ("holds", "fails", "inconclusive")


@dataclass
class Verdict:
    """The outcome of a claim's rule, with the numbers that decided it."""

    status: Status
    reason: str
    numbers: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"verdict status must be one of {STATUSES}, got {self.status!r}")

    def to_dict(self) -> dict:
        return {"status": self.status, "reason": self.reason, "numbers": self.numbers}


@dataclass
class Context:
    """What a claim's ``run`` gets: the mode, seeds, where to write, a progress hook."""

    quick: bool
    seeds: list[int]
    out_dir: Path
    log: object = print  # callable(str)

    def pick(self, quick, full):
        """``quick`` value in quick mode, ``full`` otherwise."""
        return quick if self.quick else full


class Claim:
    """Base class of every claim; subclasses set the class attributes and the three methods."""

    id: ClassVar[str]
    title: ClassVar[str]
    source: ClassVar[str]
    statement: ClassVar[str]
    protocol: ClassVar[str]
    rule: ClassVar[str]
    default_seeds: ClassVar[int] = 3
    quick_seeds: ClassVar[int] = 1

    def run(self, ctx: Context) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def verdict(self, evidence: dict) -> Verdict:  # pragma: no cover - interface
        raise NotImplementedError

    def plot(self, evidence: dict, fig) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict:
        return {k: getattr(self, k) for k in ("id", "title", "source", "statement", "protocol", "rule")}


@dataclass(frozen=True)
class PendingClaim:
    """A claim listed in CLAIMS.md that waits for a family normlab does not have yet."""

    id: str
    source: str
    statement: str
    needs: str


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (0 for one value) of the finite values; nan if none."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    num = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True))
    den = sum((a - mx) ** 2 for a in lx)
    return num / den
