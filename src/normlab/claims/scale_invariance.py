"""scale-invariance: BN and LN are invariant to the scale of the weights before them.

Source: Arpit lecture; Ba, Kiros & Hinton 2016 (Layer Normalization, Table 1).

Identities, so the rule is made of checks. Per seed, random float64 layers
with random affine norms, for every c in ``cs``:

- ``bn-linear``: Linear -> normlab BatchNorm1d; ``bn-conv``: Conv2d ->
  BatchNorm2d. Output under W -> cW via
  :func:`normlab.analysis.scale_invariance` (training mode, batch
  statistics; loss a fixed random linear functional of the output) and the
  gradient error ``||c grad(cW) - grad(W)|| / ||grad(W)||`` (same loss)
  computed directly (the tool's ratio and cosine give it only to ~1e-8).
- ``ln``: Linear -> normlab LayerNorm: the same weight scaling; re-centering
  W -> W + 1 (c v)^T (one vector added to every row, v with the rows' scale);
  and x_i -> c x_i for one example i (its output compared).

The layers have no bias (a bias is not scaled with W: the statements are
about W). The norms use ``eps = tiny``, the smallest positive float64
(BatchNorm refuses eps = 0 in training, as torch's does): the statement is an
identity of the normalization and eps, a numerical guard, breaks it by about
eps / var. The same checks with the default eps (``default_eps``) are a note,
not part of the rule (the error is largest at c = 0.1, where the pre-norm
variance is 100x smaller).

Controls (not invariant; they show the checks can see a difference): BN
under one example's input rescaling, LN under the rescaling of one unit's
weight row. If a control reads below ``control_floor`` the checks cannot tell
invariant from not: that part is inconclusive.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import nn as nlnn
from ..analysis import scale_invariance
from .base import Check, Claim, Verdict, exact_part, fmt
from .recipes import num

F64 = torch.float64
TINY = torch.finfo(F64).tiny  # eps > 0 as BatchNorm training requires, ~2e-308 against variances ~1

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


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||``."""
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def grad_rel_err(model: nn.Module, x: torch.Tensor, c: float, seed: int) -> float:
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
    return rel(c * gc, g0)


def _affine(norm: nn.Module, gen: torch.Generator) -> nn.Module:
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(norm.weight.shape, generator=gen, dtype=F64))
        norm.bias.copy_(torch.randn(norm.bias.shape, generator=gen, dtype=F64))
    return norm


def _weight_checks(model: nn.Module, x: torch.Tensor, tag: str, cs, seed: int) -> list[dict]:
    res = scale_invariance(model, "0.weight", x, cs=cs, bn_mode="train", seed=seed)
    out_name, grad_name = (
        (f"{tag}: output", f"{tag}: grad")
        if tag.startswith("bn")
        else (f"{tag}: W scale, output", f"{tag}: W scale, grad")
    )
    rows = []
    for c, out in zip(cs, res.output_change.tolist(), strict=True):
        rows.append({"check": out_name, "c": c, "rel_err": out})
        rows.append({"check": grad_name, "c": c, "rel_err": grad_rel_err(model, x, c, seed)})
    return rows


def _layers(p: dict, seed: int, eps: float) -> dict:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    d_in, d_out = p["in_features"], p["features"]
    c_in, c_out = p["conv_channels"]
    bn_lin = nn.Sequential(nn.Linear(d_in, d_out, bias=False), _affine(nlnn.BatchNorm1d(d_out, eps=eps), gen))
    bn_conv = nn.Sequential(
        nn.Conv2d(c_in, c_out, p["kernel"], bias=False), _affine(nlnn.BatchNorm2d(c_out, eps=eps), gen)
    )
    ln = nn.Sequential(nn.Linear(d_in, d_out, bias=False), _affine(nlnn.LayerNorm(d_out, eps=eps), gen))
    return {
        "bn_lin": bn_lin.to(F64),
        "bn_conv": bn_conv.to(F64),
        "ln": ln.to(F64),
        "x_vec": 2 * torch.randn(p["batch"], d_in, generator=gen, dtype=F64) + 0.5,
        "x_img": torch.randn(p["img_batch"], c_in, p["img_size"], p["img_size"], generator=gen, dtype=F64) + 0.5,
        # v on the scale of the rows of nn.Linear(d_in, .) (uniform within 1/sqrt(d_in))
        "v": torch.randn(d_in, generator=gen, dtype=F64) / math.sqrt(d_in),
    }


@torch.no_grad()
def _direct_checks(layers: dict, cs) -> list[dict]:
    """LN re-centering and single-input rescaling, and the two controls."""
    rows = []
    ln, bn, x = layers["ln"], layers["bn_lin"], layers["x_vec"]
    ln.train()
    bn.train()
    w_ln, w_bn = ln[0].weight.detach().clone(), bn[0].weight.detach().clone()
    y_ln, y_bn = ln(x), bn(x)
    try:
        for c in cs:
            ln[0].weight.copy_(w_ln + c * layers["v"])  # every row + c v: W + 1 (c v)^T
            rows.append({"check": "ln: W re-centre", "c": c, "rel_err": rel(ln(x), y_ln)})
            ln[0].weight.copy_(w_ln)
            xs = x.clone()
            xs[0] *= c
            rows.append({"check": "ln: one input scaled", "c": c, "rel_err": rel(ln(xs)[0], y_ln[0])})
            rows.append({"check": "control bn: one input scaled", "c": c, "rel_err": rel(bn(xs)[0], y_bn[0])})
            w = w_ln.clone()
            w[0] *= c
            ln[0].weight.copy_(w)
            rows.append({"check": "control ln: one row scaled", "c": c, "rel_err": rel(ln(x), y_ln)})
            ln[0].weight.copy_(w_ln)
    finally:
        ln[0].weight.copy_(w_ln)
        bn[0].weight.copy_(w_bn)
    return rows


def all_checks(p: dict, seed: int, eps: float) -> list[dict]:
    """Every check and control row for one seed's layers with the norms' ``eps``."""
    layers = _layers(p, seed, eps)
    cs = list(p["cs"])
    rows = _weight_checks(layers["bn_lin"], layers["x_vec"], "bn-linear", cs, seed)
    rows += _weight_checks(layers["bn_conv"], layers["x_img"], "bn-conv", cs, seed)
    rows += _weight_checks(layers["ln"], layers["x_vec"], "ln", cs, seed)
    rows += _direct_checks(layers, cs)
    return rows


class ScaleInvariance(Claim):
    id = "scale-invariance"
    title = "BN and LN are invariant to the weights' scale"
    source = "Arpit lecture; Ba, Kiros & Hinton 2016"
    statement = (
        "BN(cWx) = BN(Wx), dBN/d(cW) = (1/c) dBN/dW; LN is invariant to weight scaling/translation of the "
        "whole matrix and to rescaling of a single input"
    )
    params = {
        "cs": (0.1, 10.0, 1000.0),
        "in_features": 16,
        "features": 32,
        "batch": 64,
        "conv_channels": (3, 8),
        "kernel": 3,
        "img_batch": 8,
        "img_size": 6,
        "tolerance": 1e-5,
        "control_floor": 1e-3,
        "default_eps": 1e-5,
    }
    quick = {}
    seeds = 5
    min_seeds = 1  # identities: one seed decides (quick mode still reports inconclusive)
    protocol = (
        "float64 Linear({in_features}, {features}) -> BN1d (batch {batch}), Conv2d({conv_channels}, kernel {kernel}) "
        "-> BN2d (batch {img_batch} of {img_size}x{img_size}), Linear -> LN; no bias, eps = tiny (the smallest "
        "positive float64), random affine; c in {cs:g}; output and gradient under W -> cW, LN re-centering "
        "W -> W + 1 (c v)^T and one input x_i -> c x_i; controls: BN under one input rescaled, LN under one weight "
        "row rescaled; eps = {default_eps:g} reported beside the rule"
    )
    rule = (
        "relative error <= {tolerance:g} (float64) for every check, c and seed (checks); the controls must read "
        ">= {control_floor:g}, else inconclusive"
    )

    def cell(self, p: dict, config: dict) -> list[dict]:
        seed = config["seed"]
        rows = [{**r, "eps": "tiny"} for r in all_checks(p, seed, TINY)]
        rows += [{**r, "eps": "default"} for r in all_checks(p, seed, p["default_eps"]) if r["check"] in CHECKS]
        return rows

    def verdict(self, p: dict, rows: list[dict]) -> Verdict:
        tol = p["tolerance"]
        exact = [r for r in rows if r.get("eps", "tiny") == "tiny"]
        claimed = [r for r in exact if r["check"] in CHECKS]
        controls = [r for r in exact if r["check"] in CONTROLS]
        if not claimed:
            return Verdict("inconclusive", "no invariance checks were run")
        checks, numbers = [], {}
        for k in CHECKS:
            errs = [num(r["rel_err"]) for r in claimed if r["check"] == k]
            if not errs:
                continue
            # a nan error is a failure, not a pass: max() with nan is order-dependent, so test explicitly
            worst = max(errs) if all(math.isfinite(e) for e in errs) else math.nan
            numbers[f"max_err[{k}]"] = worst
            checks.append(Check(k, worst <= tol, f"{k}: max rel err {fmt(worst)} (limit {tol:g})"))
        finite_worst = [v for v in numbers.values() if math.isfinite(v)]
        numbers["max_err"] = max(finite_worst) if len(finite_worst) == len(numbers) else math.nan
        weakest = min((num(r["rel_err"]) for r in controls), default=math.nan)
        numbers["min_control_err"] = weakest
        control = exact_part(
            "controls move",
            True if weakest >= p["control_floor"] else None,
            f"controls (not invariant) differ by >= {fmt(weakest)} (need >= {p['control_floor']:g} for the checks "
            "to tell a difference)",
        )
        with_eps = [num(r["rel_err"]) for r in rows if r.get("eps") == "default"]
        note = ""
        if with_eps:
            numbers["max_err_default_eps"] = max(with_eps)
            note = f"with eps = {p['default_eps']:g} the worst error is {fmt(max(with_eps))} (not judged)"
        v = Verdict.combine([control], checks, numbers, note=note)
        if v.status == "holds":
            v.reason = (
                f"all {len(checks)} checks within {tol:g} (worst {fmt(numbers['max_err'])}) for c in "
                f"{', '.join(f'{c:g}' for c in p['cs'])}; {control.text}; {note}"
            )
        return v

    def plot(self, p: dict, rows: list[dict], fig) -> None:
        ax = fig.add_subplot(1, 1, 1)
        names = list(CHECKS) + list(CONTROLS)
        cs = list(p["cs"])
        width = 0.8 / len(cs)
        floor = 1e-18
        exact = [r for r in rows if r.get("eps", "tiny") == "tiny"]
        for j, c in enumerate(cs):
            vals = []
            for k in names:
                errs = [num(r["rel_err"]) for r in exact if r["check"] == k and num(r["c"]) == c]
                vals.append(max(max(errs), floor) if errs else math.nan)
            xs = [i - 0.4 + (j + 0.5) * width for i in range(len(names))]
            ax.bar(xs, vals, width, label=f"c = {c:g} (eps = tiny)")
        eps_rows = [r for r in rows if r.get("eps") == "default"]
        for i, k in enumerate(CHECKS):
            errs = [num(r["rel_err"]) for r in eps_rows if r["check"] == k]
            if errs:
                ax.plot(
                    [i],
                    [max(max(errs), floor)],
                    "k_",
                    ms=14,
                    mew=2,
                    label=f"eps = {p['default_eps']:g} (max over c)" if i == 0 else None,
                )
        ax.axhline(p["tolerance"], color="r", ls="--", lw=1, label="tolerance")
        ax.axvline(len(CHECKS) - 0.5, color="gray", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("max relative error over seeds (float64)")
        ax.legend(fontsize=7, ncol=5, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)


CLAIM = ScaleInvariance()
