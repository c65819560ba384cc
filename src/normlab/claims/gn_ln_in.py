"""gn-ln-in: LayerNorm is GroupNorm with G=1, InstanceNorm is GroupNorm with G=C.

Source: the "Normalizations" lecture; Wu & He 2018 (Group Normalization).
Protocol: random float64 inputs of several shapes (N, C, *spatial); GroupNorm
(normlab) with one group vs LayerNorm over (C, *spatial) (torch, with the
per-channel affine expanded to the per-element one), and with C groups vs
InstanceNorm (torch, affine). Rule (CLAIMS.md): max abs diff <= 1e-6.
"""

from __future__ import annotations

import torch

from .. import nn as nlnn
from .base import Claim, Context, Verdict

TOLERANCE = 1e-6
SHAPES = ((4, 8, 16), (4, 8, 6, 6), (2, 6, 3, 4, 5))


class GnLnIn(Claim):
    id = "gn-ln-in"
    title = "LN = GN(G=1), IN = GN(G=C)"
    source = "'Normalizations' lecture; Wu & He 2018"
    statement = "LayerNorm is GroupNorm with G=1, InstanceNorm is GroupNorm with G=C"
    protocol = "random float64 inputs of 1-D, 2-D and 3-D shapes; affine parameters random; compare outputs"
    rule = f"max abs diff <= {TOLERANCE:g} (float64) for every shape, both identities"

    def run(self, ctx: Context) -> dict:
        rows = []
        for seed in ctx.seeds:
            gen = torch.Generator().manual_seed(seed)
            for shape in SHAPES:
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
                            "seed": seed,
                            "shape": list(shape),
                            "ln_vs_gn1": float((gn1(x) - ln).abs().max()),
                            "in_vs_gnC": float((gnc(x) - inorm).abs().max()),
                        }
                    )
        return {"rows": rows, "tolerance": TOLERANCE}

    def verdict(self, evidence: dict) -> Verdict:
        rows = evidence["rows"]
        if not rows:
            return Verdict("inconclusive", "no comparisons were made")
        ln = max(r["ln_vs_gn1"] for r in rows)
        inn = max(r["in_vs_gnC"] for r in rows)
        numbers = {"max_diff_ln_gn1": ln, "max_diff_in_gnC": inn, "tolerance": evidence["tolerance"]}
        if ln <= evidence["tolerance"] and inn <= evidence["tolerance"]:
            return Verdict("holds", f"max |GN(1) - LN| = {ln:.1e}, max |GN(C) - IN| = {inn:.1e}", numbers)
        return Verdict("fails", f"differences above {evidence['tolerance']:g}: LN {ln:.1e}, IN {inn:.1e}", numbers)

    def plot(self, evidence: dict, fig) -> None:
        ax = fig.add_subplot(1, 1, 1)
        rows = evidence["rows"]
        labels = [f"{'x'.join(map(str, r['shape']))} s{r['seed']}" for r in rows]
        xs = range(len(rows))
        ax.bar([i - 0.2 for i in xs], [max(r["ln_vs_gn1"], 1e-18) for r in rows], 0.4, label="|GN(1) - LN|")
        ax.bar([i + 0.2 for i in xs], [max(r["in_vs_gnC"], 1e-18) for r in rows], 0.4, label="|GN(C) - IN|")
        ax.axhline(evidence["tolerance"], color="k", ls="--", lw=1, label="tolerance")
        ax.set_yscale("log")
        ax.set_xticks(list(xs), labels, rotation=30, fontsize=7)
        ax.set_ylabel("max abs difference (float64)")
        ax.legend(fontsize=8)


CLAIM = GnLnIn()
