"""gn-ln-in: LayerNorm is GroupNorm with G=1, InstanceNorm is GroupNorm with G=C.

Source: the "Normalizations" lecture; Wu & He 2018 (Group Normalization).
An identity, so the whole rule is a check: random float64 inputs of several
shapes (N, C, *spatial); normlab's GroupNorm with one group against torch's
LayerNorm over (C, *spatial) (its per-element affine set to the per-channel
one expanded), and with C groups against torch's InstanceNorm (affine).
"""

from __future__ import annotations

import torch

from .. import nn as nlnn
from .base import Check, Claim, Verdict


class GnLnIn(Claim):
    id = "gn-ln-in"
    title = "LN = GN(G=1), IN = GN(G=C)"
    source = "'Normalizations' lecture; Wu & He 2018"
    statement = "LayerNorm is GroupNorm with G=1, InstanceNorm is GroupNorm with G=C"
    params = {"shapes": ((4, 8, 16), (4, 8, 6, 6), (2, 6, 3, 4, 5)), "tolerance": 1e-6}
    quick = {}
    seeds = 5
    min_seeds = 1  # an identity: one seed decides (quick mode still reports inconclusive)
    protocol = (
        "random float64 inputs of shapes {shapes} with random per-channel affine; GroupNorm(1, C) vs LayerNorm "
        "over (C, *spatial) and GroupNorm(C, C) vs InstanceNorm"
    )
    rule = "max abs diff <= {tolerance:g} (float64) for every shape and seed, both identities (a check)"

    def cell(self, p: dict, config: dict) -> list[dict]:
        gen = torch.Generator().manual_seed(config["seed"])
        rows = []
        for shape in p["shapes"]:
            c = shape[1]
            x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 1
            w = torch.randn(c, generator=gen, dtype=torch.float64)
            b = torch.randn(c, generator=gen, dtype=torch.float64)
            gn1 = nlnn.GroupNorm(1, c).double()
            gnc = nlnn.GroupNorm(c, c).double()
            for m in (gn1, gnc):
                m.weight.data.copy_(w)
                m.bias.data.copy_(b)
            view = [c] + [1] * (len(shape) - 2)
            ln = torch.nn.functional.layer_norm(
                x, shape[1:], w.view(view).expand(shape[1:]), b.view(view).expand(shape[1:])
            )
            inorm = torch.nn.functional.instance_norm(x, weight=w, bias=b)
            with torch.no_grad():
                rows.append(
                    {
                        "shape": list(shape),
                        "ln_vs_gn1": float((gn1(x) - ln).abs().max()),
                        "in_vs_gnC": float((gnc(x) - inorm).abs().max()),
                    }
                )
        return rows

    def verdict(self, p: dict, rows: list[dict]) -> Verdict:
        if not rows:
            return Verdict("inconclusive", "no comparisons were made")
        tol = p["tolerance"]
        ln = max(r["ln_vs_gn1"] for r in rows)
        inn = max(r["in_vs_gnC"] for r in rows)
        checks = [
            Check("GN(1) = LN", ln <= tol, f"max |GN(1) - LN| = {ln:.1e} (limit {tol:g})"),
            Check("GN(C) = IN", inn <= tol, f"max |GN(C) - IN| = {inn:.1e} (limit {tol:g})"),
        ]
        v = Verdict.combine([], checks, {"max_diff_ln_gn1": ln, "max_diff_in_gnC": inn})
        if v.status == "holds":
            v.reason = f"{checks[0].text}, {checks[1].text}"
        return v

    def plot(self, p: dict, rows: list[dict], fig) -> None:
        ax = fig.add_subplot(1, 1, 1)
        labels = [f"{'x'.join(map(str, r['shape']))} s{r['seed']}" for r in rows]
        xs = range(len(rows))
        ax.bar([i - 0.2 for i in xs], [max(r["ln_vs_gn1"], 1e-18) for r in rows], 0.4, label="|GN(1) - LN|")
        ax.bar([i + 0.2 for i in xs], [max(r["in_vs_gnC"], 1e-18) for r in rows], 0.4, label="|GN(C) - IN|")
        ax.axhline(p["tolerance"], color="k", ls="--", lw=1, label="tolerance")
        ax.set_yscale("log")
        ax.set_xticks(list(xs), labels, rotation=30, fontsize=7)
        ax.set_ylabel("max abs difference (float64)")
        ax.legend(fontsize=8)


CLAIM = GnLnIn()
