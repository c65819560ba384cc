"""where-to-normalize: the rule on synthetic evidence, and one quick run."""

from __future__ import annotations

from normlab.claims.where_to_normalize import CLAIM, NORMS

from ._e2e import quick_run


def _evidence(before: float, after: float, quick: bool = False) -> dict:
    runs = [
        {"norm": n, "placement": p, "seed": s, "final_test_acc": a}
        for n in NORMS
        for p, a in (("before", before), ("after", after))
        for s in range(3)
    ]
    return {"runs": runs, "norms": list(NORMS), "steps": 1500, "chance": 0.1, "quick": quick}


def test_rule_holds():
    v = CLAIM.verdict(_evidence(0.95, 0.93))
    assert v.status == "holds", v.reason
    assert abs(v.numbers["max_gap"] - 0.02) < 1e-12


def test_rule_fails():
    assert CLAIM.verdict(_evidence(0.95, 0.90)).status == "fails"
    ev = _evidence(0.95, 0.95)
    ev["runs"][0]["final_test_acc"] = "nan"  # a diverged seed
    assert CLAIM.verdict(ev).status == "fails"


def test_rule_inconclusive():
    assert CLAIM.verdict(_evidence(0.1, 0.11)).status == "inconclusive"  # neither trains
    assert CLAIM.verdict(_evidence(0.95, 0.94, quick=True)).status == "inconclusive"


def test_quick_run(tmp_path):
    quick_run("where-to-normalize", tmp_path)
