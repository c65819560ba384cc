"""scale-invariance: the rule on synthetic evidence, and one quick run."""

from __future__ import annotations

from normlab.claims.scale_invariance import CHECKS, CLAIM, CONTROLS

from ._e2e import quick_run


def _evidence(err: float, control: float) -> dict:
    rows = [{"check": k, "c": c, "rel_err": err, "seed": 0} for k in CHECKS for c in (0.1, 10.0)]
    rows += [{"check": k, "c": c, "rel_err": control, "seed": 0} for k in CONTROLS for c in (0.1, 10.0)]
    return {"rows": rows, "with_default_eps": [], "cs": [0.1, 10.0], "tolerance": 1e-5}


def test_rule_holds():
    v = CLAIM.verdict(_evidence(1e-14, 0.5))
    assert v.status == "holds"
    assert v.numbers["max_err"] == 1e-14


def test_rule_fails_on_one_large_error():
    ev = _evidence(1e-14, 0.5)
    ev["rows"][3]["rel_err"] = 2e-5
    assert CLAIM.verdict(ev).status == "fails"


def test_rule_fails_on_nan_error():
    ev = _evidence(1e-14, 0.5)
    ev["rows"][0]["rel_err"] = "nan"  # how JSON stores a non-finite float
    assert CLAIM.verdict(ev).status == "fails"


def test_rule_inconclusive_when_controls_do_not_move():
    assert CLAIM.verdict(_evidence(1e-14, 1e-9)).status == "inconclusive"


def test_quick_run(tmp_path):
    saved = quick_run("scale-invariance", tmp_path)
    assert saved["verdict"]["status"] == "holds"  # a float64 property check: quick decides
