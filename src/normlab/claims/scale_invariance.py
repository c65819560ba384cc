"""scale-invariance: BN and LN are invariant to the scale of the weights before them.

Source: Arpit lecture; Ba, Kiros & Hinton 2016 (Layer Normalization, Table 1).

Statement (CLAIMS.md): BN(cWx) = BN(Wx) and dBN/d(cW) = (1/c) dBN/dW; LN is
invariant to scaling and to translation (re-centering) of the whole weight
matrix and to the rescaling of a single input.

Protocol: random float64 layers per seed, c in {0.1, 10, 1000}:

- ``bn-linear``: Linear(16, 32, no bias) -> normlab BatchNorm1d, batch 64;
  ``bn-conv``: Conv2d(3, 8, 3, no bias) -> normlab BatchNorm2d, batch 8 of 6x6.
  Output and gradient under W -> cW via
  :func:`normlab.analysis.scale_invariance` (training mode, batch
  statistics; loss a fixed random linear functional of the output): the
  output error is its ``output_change``; the gradient error
  ``||c grad(cW) - grad(W)|| / ||grad(W)||`` (same loss) is computed directly
  (the tool's ratio and cosine would give it only to ~1e-8).
- ``ln``: Linear(16, 32, no bias) -> normlab LayerNorm(32): the same weight
  scaling; re-centering W -> W + 1 (c v)^T (the same vector added to every
  row, v random with the rows' scale); and x_i -> c x_i for one example i
  (its output compared).

The biases before the norms are off: a bias is not scaled with W, so
``BN(cWx + b) != BN(Wx + b)``; the statements are about W. The norms use
``eps = tiny`` (the smallest positive float64, ~2e-308; BatchNorm refuses
``eps = 0`` in training, as torch's does): the statement is an identity of
the normalization, and eps (a numerical guard) breaks it by about
``eps / var``, here far below rounding: the same checks with the
default ``eps = 1e-5`` are reported beside the rule, not in it (at c = 0.1
the pre-BN variance is 100x smaller and the eps effect is ~1e-3).

Controls (not claimed invariant, shown to prove the checks can see a
difference): BN under one example's input rescaling, LN under the rescaling
of a single unit's weight row.

Rule (CLAIMS.md): relative error <= 1e-5 (float64) for every check, layer, c
and seed. Refinement: if a control also reads below 1e-3 the checks cannot
tell invariant from not, and the verdict is ``inconclusive``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import nn as nlnn
from ..analysis import scale_invariance
from ._workbench import num, one_thread
from .base import Claim, Context, Verdict

# The smallest positive float64: eps > 0 as BatchNorm training requires, ~1e-308 against variances ~1.
_EPS_TINY = torch.finfo(torch.float64).tiny

TOLERANCE = 1e-5
CONTROL_FLOOR = 1e-3
CS = (0.1, 10.0, 1000.0)
CHECKS = (
    "bn-linear: output",
    "bn-linear: grad",
    "bn-conv: output",
    "bn-conv: grad",
    "ln: W scale, output",
    "ln: W scale, grad",
    "ln: W re-centre",
    "ln: one input scaled",
)
CONTROLS = ("control bn: one input scaled", "control ln: one row scaled")
F64 = torch.float64


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def _grad_rel_err(model: nn.Module, x: torch.Tensor, c: float, seed: int) -> float:
    """``||c grad(cW) - grad(W)|| / ||grad(W)||`` for the loss ``sum(out * r)``, r ~ N(0, 1) fixed by ``seed``."""
    p = model[0].weight
    w0 = p.detach().clone()

    def grad() -> torch.Tensor:
        out = model(x)
        r = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
        (g,) = torch.autograd.grad((out * r).sum(), [p])
        return g

    model.train()
    try:
        g0 = grad()
        with torch.no_grad():
            p.copy_(w0 * c)
        gc = grad()
    finally:
        with torch.no_grad():
            p.copy_(w0)
    return _rel(c * gc, g0)


def _affine(norm: nn.Module, gen: torch.Generator) -> nn.Module:
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(norm.weight.shape, generator=gen, dtype=F64))
        norm.bias.copy_(torch.randn(norm.bias.shape, generator=gen, dtype=F64))
    return norm


def _weight_checks(model: nn.Module, x: torch.Tensor, tag: str, seed: int) -> list[dict]:
    res = scale_invariance(model, "0.weight", x, cs=CS, bn_mode="train", seed=seed)
    out_name, grad_name = (
        (f"{tag}: output", f"{tag}: grad")
        if tag.startswith("bn")
        else (f"{tag}: W scale, output", f"{tag}: W scale, grad")
    )
    rows = []
    for c, out in zip(CS, res.output_change.tolist(), strict=True):
        rows.append({"check": out_name, "c": c, "rel_err": out})
        rows.append({"check": grad_name, "c": c, "rel_err": _grad_rel_err(model, x, c, seed)})
    return rows


def _layers(seed: int, eps: float) -> dict:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    bn_lin = nn.Sequential(nn.Linear(16, 32, bias=False), _affine(nlnn.BatchNorm1d(32, eps=eps), gen)).to(F64)
    bn_conv = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), _affine(nlnn.BatchNorm2d(8, eps=eps), gen)).to(F64)
    ln = nn.Sequential(nn.Linear(16, 32, bias=False), _affine(nlnn.LayerNorm(32, eps=eps), gen)).to(F64)
    return {
        "bn_lin": bn_lin,
        "bn_conv": bn_conv,
        "ln": ln,
        "x_vec": 2 * torch.randn(64, 16, generator=gen, dtype=F64) + 0.5,
        "x_img": torch.randn(8, 3, 6, 6, generator=gen, dtype=F64) + 0.5,
        "v": torch.randn(16, generator=gen, dtype=F64) / 4.0,  # rows of nn.Linear(16, .) have std ~ 1/(4 sqrt(3))
    }


@torch.no_grad()
def _direct_checks(layers: dict) -> list[dict]:
    """LN re-centering and single-input rescaling, and the two controls."""
    rows = []
    ln, bn, x = layers["ln"], layers["bn_lin"], layers["x_vec"]
    ln.train()
    bn.train()
    w_ln, w_bn = ln[0].weight.detach().clone(), bn[0].weight.detach().clone()
    y_ln, y_bn = ln(x), bn(x)
    try:
        for c in CS:
            ln[0].weight.copy_(w_ln + c * layers["v"])  # every row + c v: W + 1 (c v)^T
            rows.append({"check": "ln: W re-centre", "c": c, "rel_err": _rel(ln(x), y_ln)})
            ln[0].weight.copy_(w_ln)
            xs = x.clone()
            xs[0] *= c
            rows.append({"check": "ln: one input scaled", "c": c, "rel_err": _rel(ln(xs)[0], y_ln[0])})
            rows.append({"check": "control bn: one input scaled", "c": c, "rel_err": _rel(bn(xs)[0], y_bn[0])})
            w = w_ln.clone()
            w[0] *= c
            ln[0].weight.copy_(w)
            rows.append({"check": "control ln: one row scaled", "c": c, "rel_err": _rel(ln(x), y_ln)})
            ln[0].weight.copy_(w_ln)
    finally:
        ln[0].weight.copy_(w_ln)
        bn[0].weight.copy_(w_bn)
    return rows


def _all_checks(seed: int, eps: float) -> list[dict]:
    layers = _layers(seed, eps)
    rows = _weight_checks(layers["bn_lin"], layers["x_vec"], "bn-linear", seed)
    rows += _weight_checks(layers["bn_conv"], layers["x_img"], "bn-conv", seed)
    rows += _weight_checks(layers["ln"], layers["x_vec"], "ln", seed)
    rows += _direct_checks(layers)
    return [{**r, "seed": seed} for r in rows]


class ScaleInvariance(Claim):
    id = "scale-invariance"
    title = "BN and LN are invariant to the weights' scale"
    source = "Arpit lecture; Ba, Kiros & Hinton 2016"
    statement = (
        "BN(cWx) = BN(Wx), dBN/d(cW) = (1/c) dBN/dW; LN is invariant to weight scaling/translation of the "
        "whole matrix and to rescaling of a single input"
    )
    protocol = (
        "float64 Linear->BN1d, Conv2d->BN2d, Linear->LN (no bias, eps=tiny ~ 2e-308, random affine), "
        "c in {0.1, 10, 1000}; "
        "output and gradient errors via normlab.analysis.scale_invariance; LN re-centering and one-input "
        "rescaling directly; controls: BN under one-input rescaling, LN under one-row rescaling; "
        "eps=1e-5 reported beside the rule"
    )
    rule = f"relative error <= {TOLERANCE:g} (float64) for every check, c and seed (controls must read >= 1e-3)"

    def run(self, ctx: Context) -> dict:
        rows, with_eps = [], []
        with one_thread():
            for seed in ctx.seeds:
                rows += _all_checks(seed, eps=_EPS_TINY)
                with_eps += [r for r in _all_checks(seed, eps=1e-5) if r["check"] in CHECKS]
        return {"rows": rows, "with_default_eps": with_eps, "cs": list(CS), "tolerance": TOLERANCE}

    def verdict(self, evidence: dict) -> Verdict:
        rows = evidence["rows"]
        tol = num(evidence["tolerance"])
        claimed = [r for r in rows if r["check"] in CHECKS]
        controls = [r for r in rows if r["check"] in CONTROLS]
        if not claimed:
            return Verdict("inconclusive", "no invariance checks were run")
        worst = {
            k: max(num(r["rel_err"]) for r in claimed if r["check"] == k)
            for k in CHECKS
            if any(r["check"] == k for r in claimed)
        }
        # a nan error is a failure, not a pass: max() with nan is order-dependent, so test explicitly
        bad = [k for k in worst if not (worst[k] <= tol)] + [
            r["check"] for r in claimed if not math.isfinite(num(r["rel_err"]))
        ]
        weakest_control = min((num(r["rel_err"]) for r in controls), default=math.nan)
        numbers = {f"max_err[{k}]": v for k, v in worst.items()}
        numbers["max_err"] = max(worst.values())
        numbers["min_control_err"] = weakest_control
        numbers["tolerance"] = tol
        if "with_default_eps" in evidence and evidence["with_default_eps"]:
            numbers["max_err_with_eps_1e-5"] = max(num(r["rel_err"]) for r in evidence["with_default_eps"])
        if bad:
            return Verdict(
                "fails",
                f"{len(set(bad))} of {len(worst)} checks exceed {tol:g}: worst {numbers['max_err']:.1e} "
                f"({', '.join(sorted(set(bad)))})",
                numbers,
            )
        if not controls or not (weakest_control >= CONTROL_FLOOR):
            return Verdict(
                "inconclusive",
                f"invariances within {tol:g} but a control (not invariant) reads {weakest_control:.1e} < "
                f"{CONTROL_FLOOR:g}: the checks cannot tell the difference",
                numbers,
            )
        return Verdict(
            "holds",
            f"all {len(worst)} checks within {tol:g} (worst {numbers['max_err']:.1e}) for c in {evidence['cs']}; "
            f"controls differ by >= {weakest_control:.1e}",
            numbers,
        )

    def plot(self, evidence: dict, fig) -> None:
        ax = fig.add_subplot(1, 1, 1)
        names = list(CHECKS) + list(CONTROLS)
        cs = evidence["cs"]
        width = 0.8 / len(cs)
        floor = 1e-18
        for j, c in enumerate(cs):
            vals = []
            for k in names:
                errs = [num(r["rel_err"]) for r in evidence["rows"] if r["check"] == k and num(r["c"]) == c]
                vals.append(max(max(errs), floor) if errs else math.nan)
            xs = [i - 0.4 + (j + 0.5) * width for i in range(len(names))]
            ax.bar(xs, vals, width, label=f"c = {c:g} (eps = tiny)")
        eps_rows = evidence.get("with_default_eps", [])
        if eps_rows:
            for i, k in enumerate(CHECKS):
                errs = [num(r["rel_err"]) for r in eps_rows if r["check"] == k]
                if errs:
                    ax.plot(
                        [i],
                        [max(max(errs), floor)],
                        "k_",
                        ms=14,
                        mew=2,
                        label="eps = 1e-5 (max over c)" if i == 0 else None,
                    )
        ax.axhline(num(evidence["tolerance"]), color="r", ls="--", lw=1, label="tolerance")
        ax.axvline(len(CHECKS) - 0.5, color="gray", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("max relative error over seeds (float64)")
        ax.legend(fontsize=7, ncol=5, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)


CLAIM = ScaleInvariance()
