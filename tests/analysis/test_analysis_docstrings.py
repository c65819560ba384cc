"""The runnable examples in the docstrings of every analysis module."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["_common", "hessian", "sharpness", "conditioning", "probes", "landscape", "stochasticity", "scale"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(f"normlab.analysis.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
