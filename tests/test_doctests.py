"""Every docstring example of the ``normlab`` package runs, and prints what it shows.

One test per module of the package (``pkgutil.walk_packages``), each running
that module's doctests (``doctest.DocTestFinder``: module, classes, functions,
methods) with ``ELLIPSIS`` and ``NORMALIZE_WHITESPACE``. A module without
examples is reported as skipped, so a package that stops documenting shows.
"""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil

import pytest
import torch

import normlab

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules() -> list[str]:
    names = [normlab.__name__]
    names += [m.name for m in pkgutil.walk_packages(normlab.__path__, prefix=f"{normlab.__name__}.")]
    return sorted(names)


# Modules whose doctests would need heavy work to run here (module name -> reason). Keep it empty
# unless an example genuinely cannot run in a test (a download, a GPU, minutes of compute).
SKIP: dict[str, str] = {}


@pytest.mark.parametrize("name", _modules())
def test_module_doctests(name):
    if name in SKIP:
        pytest.skip(SKIP[name])
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder(exclude_empty=True).find(module) if t.examples]
    if not tests:
        pytest.skip(f"{name} has no docstring examples")
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    out = io.StringIO()
    torch.manual_seed(0)  # examples that draw random numbers are reproducible
    rng_state = torch.get_rng_state()
    try:
        for test in tests:
            runner.run(test, out=out.write)
    finally:
        torch.set_rng_state(rng_state)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}:\n{out.getvalue()}"
