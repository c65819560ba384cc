"""norm-fixes-init: the rule on synthetic evidence, and one quick run."""

from __future__ import annotations

from normlab.claims.norm_fixes_init import CLAIM, CS, NORMS, norm_ratio

from ._e2e import quick_run


def _evidence(acc: float = 0.4, ratio: float = 1.1, ref: float = 0.42, quick: bool = False) -> dict:
    runs = [{"norm": "none", "c": 2.0, "seed": s, "final_test_acc": ref, "init_ratio": 3.0} for s in range(3)]
    runs += [
        {"norm": n, "c": c, "seed": s, "final_test_acc": acc, "init_ratio": ratio}
        for n in NORMS
        for c in CS
        for s in range(3)
    ]
    return {"runs": runs, "cs": list(CS), "norms": list(NORMS), "epochs": 10, "chance": 0.1, "quick": quick}


def test_rule_holds():
    v = CLAIM.verdict(_evidence())
    assert v.status == "holds", v.reason
    assert v.numbers["max_init_ratio"] == 1.1


def test_rule_fails_on_accuracy_or_ratio():
    assert CLAIM.verdict(_evidence(acc=0.36)).status == "fails"  # 0.36 < 0.42 - 0.05
    assert CLAIM.verdict(_evidence(ratio=2.5)).status == "fails"
    ev = _evidence()
    ev["runs"][-1]["final_test_acc"] = "nan"  # one diverged seed
    assert CLAIM.verdict(ev).status == "fails"


def test_rule_inconclusive():
    assert CLAIM.verdict(_evidence(quick=True)).status == "inconclusive"
    ev = _evidence()
    ev["runs"] = [r for r in ev["runs"] if r["norm"] != "none"]
    assert CLAIM.verdict(ev).status == "inconclusive"


def test_norm_ratio():
    assert norm_ratio([1.0, 2.0, 1.5]) == 2.0
    assert norm_ratio([1.0, "nan"]) == float("inf")


def test_quick_run(tmp_path):
    quick_run("norm-fixes-init", tmp_path)
