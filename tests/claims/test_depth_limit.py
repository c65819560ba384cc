"""depth-limit: the staged walk over depths, lrs and seeds, and the rule, on synthetic cells (no training)."""

from __future__ import annotations

import math

from normlab.claims.depth_limit import CLAIM, majority, plan, variant_name

P = {**CLAIM.settings(), "depths": (2, 4, 8, 16, 32, 64)}  # a grid past BN's limit in these tests
SEEDS = list(range(5))


def _collect(limits: dict, lr_ok=lambda norm, depth, lr: True, seed_ok=lambda seed: True) -> list[dict]:
    """Emulate the sweep: call the grid until it asks for nothing new; a cell passes below its variant's limit."""
    rows, seen = [], set()
    while True:
        new = [c for c in CLAIM.grid(P, SEEDS, rows) if str(sorted(c.items())) not in seen]
        if not new:
            return rows
        for c in new:
            seen.add(str(sorted(c.items())))
            ok = (
                c["depth"] <= limits[c["norm"], c["c"]] and lr_ok(c["norm"], c["depth"], c["lr"]) and seed_ok(c["seed"])
            )
            rows.append(
                {
                    **c,
                    "passed": ok,
                    "steps_to_target": 500.0 if ok else math.nan,
                    "final_train_acc": 0.95 if ok else 0.3,
                }
            )


LIMITS = {("none", 1.0): 8, ("none", 2.0): 16, ("bn", 1.0): 32, ("ln", 1.0): 16}


def test_holds_when_bn_and_ln_reach_twice_the_baseline():
    rows = _collect(LIMITS)
    v = CLAIM.verdict(P, rows)
    assert v.status == "holds", v.reason
    assert v.numbers["deepest[bn (c=1)]"] == 32 and v.numbers["deepest[none (c=1)]"] == 8
    assert v.numbers["bn_hits_limit"] == 1.0
    # the walk stops at the first untrainable depth: nothing deeper than 64 for BN's limit 32, nothing past 16 for c=1
    assert max(r["depth"] for r in rows if r["norm"] == "none" and r["c"] == 1.0) == 16


def test_fails_when_ln_falls_short():
    v = CLAIM.verdict(P, _collect({**LIMITS, ("ln", 1.0): 8}))
    assert v.status == "fails", v.reason


def test_inconclusive_when_the_grid_cannot_show_the_factor():
    limits = {k: 64 for k in LIMITS}  # every variant trains at every depth: 2 x 64 is beyond the grid
    v = CLAIM.verdict(P, _collect(limits))
    assert v.status == "inconclusive", v.reason


def test_lr_is_tuned_from_the_largest_down_on_the_first_seed():
    # only the smallest rate trains: the first seed tries every rate, the others run only at the smallest
    rows = _collect(LIMITS, lr_ok=lambda norm, depth, lr: lr == min(P["lrs"]))
    at2 = [r for r in rows if r["norm"] == "bn" and r["depth"] == 2]
    assert sorted(r["lr"] for r in at2 if r["seed"] == 0) == sorted(P["lrs"])
    assert {r["lr"] for r in at2 if r["seed"] != 0} == {min(P["lrs"])}
    # a deeper net starts from the rate that trained the shallower one: larger rates are not tried again
    assert {r["lr"] for r in rows if r["norm"] == "bn" and r["depth"] == 4} == {min(P["lrs"])}
    assert CLAIM.verdict(P, rows).status == "holds"


def test_majority_of_seeds_decides_and_stops_early():
    assert majority(5) == 3
    # the first seed fails everywhere, the others pass: 4/5 pass, still trainable
    rows = _collect(LIMITS, seed_ok=lambda s: s != 0)
    assert CLAIM.verdict(P, rows).status == "holds"
    # seeds 0, 1, 2 fail: decided after three failures, seeds 3 and 4 are not run
    rows = _collect(LIMITS, seed_ok=lambda s: s >= 3)
    assert {r["seed"] for r in rows} == {0, 1, 2}
    _, decided = plan(P, SEEDS, rows, "bn", 1.0)
    assert decided == [] or not decided[0]["trainable"]
    assert variant_name("bn", 1.0) == "bn (c=1)"
