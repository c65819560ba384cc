"""scale-invariance: the rule on synthetic rows (holds / fails / inconclusive) and the identities themselves."""

from __future__ import annotations

from normlab.claims.scale_invariance import CHECKS, CLAIM, CONTROLS, TINY, all_checks

P = CLAIM.settings()


def _rows(err: float, control: float, eps_err: float = 2e-3) -> list[dict]:
    rows = [{"check": k, "c": c, "rel_err": err, "seed": 0, "eps": "tiny"} for k in CHECKS for c in P["cs"]]
    rows += [{"check": k, "c": c, "rel_err": control, "seed": 0, "eps": "tiny"} for k in CONTROLS for c in P["cs"]]
    rows += [{"check": k, "c": c, "rel_err": eps_err, "seed": 0, "eps": "default"} for k in CHECKS for c in P["cs"]]
    return rows


def test_rule_holds():
    v = CLAIM.verdict(P, _rows(1e-14, 0.5))
    assert v.status == "holds", v.reason
    assert v.numbers["max_err"] == 1e-14
    assert v.numbers["max_err_default_eps"] == 2e-3  # reported, not judged
    assert len(v.checks) == len(CHECKS)


def test_rule_fails_on_one_large_error():
    rows = _rows(1e-14, 0.5)
    rows[3]["rel_err"] = 2e-5
    v = CLAIM.verdict(P, rows)
    assert v.status == "fails" and "CHECK FAILED" in v.reason


def test_rule_fails_on_nan_error():
    rows = _rows(1e-14, 0.5)
    rows[0]["rel_err"] = "nan"  # how JSON stores a non-finite float
    assert CLAIM.verdict(P, rows).status == "fails"


def test_rule_inconclusive_when_controls_do_not_move():
    v = CLAIM.verdict(P, _rows(1e-14, 1e-9))
    assert v.status == "inconclusive", v.reason


def test_the_identities_hold_in_float64_and_the_controls_move():
    rows = all_checks(P, 0, TINY)
    claimed = [r["rel_err"] for r in rows if r["check"] in CHECKS]
    controls = [r["rel_err"] for r in rows if r["check"] in CONTROLS]
    assert len(claimed) == len(CHECKS) * len(P["cs"])
    assert max(claimed) <= P["tolerance"]
    assert min(controls) >= P["control_floor"]
