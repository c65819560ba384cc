"""Compatibility shim: the old case table, now read from the test table (:mod:`normtable`).

``tests/test_errors.py`` imports ``CASES`` and ``make_input`` from here; new
tests should import :mod:`normtable` (``INFOS``, ``NormInfo``, ``make_input``)
directly. Remove this file once nothing imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from normtable import NormInfo, make_input
from normtable.standard import INFOS as _STANDARD


@dataclass(frozen=True)
class Case:
    """A :class:`normtable.NormInfo` seen through the old interface (``id``, ``name``, ``shapes``, ``build``)."""

    info: NormInfo

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """The first input's shape of every sample."""
        return tuple(s.shapes[0] for s in self.info.samples)

    def build(self, dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
        return self.info.build(dtype, seed)

    def __str__(self) -> str:
        return self.id


CASES: tuple[Case, ...] = tuple(Case(i) for i in _STANDARD)
CASE_IDS = [c.id for c in CASES]

__all__ = ["CASES", "CASE_IDS", "Case", "make_input"]
