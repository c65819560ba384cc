"""Lanczos vs power iteration: Hessian-vector products to the top eigenvalue.

    python benchmarks/hessian.py                  # full run (about a minute on 2 cores)
    python benchmarks/hessian.py --quick          # a smoke run (seconds)
    python benchmarks/hessian.py --out benchmarks/RESULTS-analysis.md

Small MLPs (a few thousand parameters, tanh, cross-entropy on random data;
with and without normlab BatchNorm1d, at initialization and after some SGD
steps), float64. The reference top eigenvalue is that of the dense Hessian
(``torch.func.jacrev(torch.func.grad(loss))`` + ``eigvalsh``, independent of
normlab's HVP code; ``--reference lanczos`` uses Lanczos run to residual 1e-12
instead). HVP counts do not depend on threads; the default is one torch thread,
because spinning intra-op threads make tiny products many times slower on a
busy machine (the ms/HVP column is informative only).

For each model and each of ``--starts`` random start vectors, both methods run
with a strict stopping rule and a large budget; the figure of merit is the
number of HVPs after which the estimate stays within ``--accuracy`` (default
1e-3) relative of the reference. Also reported: what each method's own
stopping rule gives at ``tol = accuracy`` (HVPs used and the error actually
reached): Lanczos stops on the Ritz residual, power iteration on the relative
change of the Rayleigh quotient (which can stop early when eigenvalues are
close). ``--out`` writes (or replaces) the section "Hessian: Lanczos vs power
iteration" of the given markdown file and leaves its other sections alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jacrev

import normlab
from normlab.analysis import HessianOperator
from normlab.analysis._common import preserved_state, set_bn_mode
from normlab.bench import machine_info, replace_section, set_threads

HEADING = "## Hessian: Lanczos vs power iteration (normlab.analysis.hessian)"
DT = torch.float64


@dataclass
class Case:
    name: str
    bn: bool
    trained_steps: int
    bn_mode: str


def make_model(bn: bool, widths: tuple[int, ...], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-2], widths[1:-1], strict=True):
        layers.append(nn.Linear(a, b))
        if bn:
            layers.append(normlab.nn.BatchNorm1d(b))
        layers.append(nn.Tanh())
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers).to(DT)


def make_data(n: int, d: int, classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=DT), torch.randint(0, classes, (n,), generator=g)


def train(model: nn.Module, data, steps: int, lr: float = 0.5) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = data
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def dense_spectrum(model: nn.Module, data, bn_mode: str) -> torch.Tensor:
    names = [n for n, p in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    x, y = data
    with preserved_state(model):
        set_bn_mode(model, bn_mode)
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}

        def f(flat):
            tensors, i = {}, 0
            for n, p in zip(names, params, strict=True):
                tensors[n] = flat[i : i + p.numel()].view_as(p)
                i += p.numel()
            bufs = {n: b.clone() for n, b in buffers.items()}
            return F.cross_entropy(functional_call(model, {**tensors, **bufs}, (x,)), y)

        flat0 = torch.cat([p.reshape(-1) for p in params])
        # Reverse-over-reverse, vmapped over basis vectors in chunks (bounded memory).
        hess = jacrev(grad(f), chunk_size=256)(flat0)
    return torch.linalg.eigvalsh(hess)


def hvps_to_accuracy(history: list[float], ref: float, accuracy: float) -> int | None:
    """The number of HVPs after which every later estimate is within ``accuracy`` relative of ``ref``."""
    ok_from = None
    for i, v in enumerate(history):
        if abs(v - ref) <= accuracy * abs(ref):
            if ok_from is None:
                ok_from = i + 1
        else:
            ok_from = None
    return ok_from


def summary(xs: list[int | None], budget: int) -> str:
    if any(x is None for x in xs):
        reached = [x for x in xs if x is not None]
        return f"> {budget} ({len(reached)}/{len(xs)} reached)"
    med = statistics.median(xs)
    return f"{med:g} [{min(xs)}, {max(xs)}]"


def run(args) -> tuple[list[dict], dict]:
    widths = (12, 24, 24, 5) if args.quick else (20, 48, 48, 10)
    n = 128 if args.quick else 512
    cases = [
        Case("MLP tanh, init", False, 0, "eval"),
        Case("MLP tanh, trained", False, args.train_steps, "eval"),
        Case("MLP tanh + BatchNorm1d, init", True, 0, "train"),
        Case("MLP tanh + BatchNorm1d, trained", True, args.train_steps, "train"),
    ]
    data = make_data(n, widths[0], widths[-1], seed=0)
    rows = []
    for case in cases:
        model = make_model(case.bn, widths, seed=1)
        train(model, data, case.trained_steps)
        op = HessianOperator(model, F.cross_entropy, data, bn_mode=case.bn_mode)
        t0 = time.perf_counter()
        if args.reference == "dense":
            ev = dense_spectrum(model, data, case.bn_mode)
            lam1, lam2 = float(ev[-1]), float(ev[-2])
            ref_kind = "dense"
        else:
            top = op.top_eigenvalues(2, tol=1e-12, max_iter=400)
            lam1, lam2 = float(top.eigenvalues[0]), float(top.eigenvalues[1])
            ref_kind = "lanczos"
        ref_s = time.perf_counter() - t0
        per_method = {}
        for method in ("lanczos", "power"):
            budget = args.lanczos_budget if method == "lanczos" else args.power_budget
            to_acc, stop_hvp, stop_err = [], [], []
            t0 = time.perf_counter()
            start_hvp = op.num_hvp
            for s in range(args.starts):
                strict = op.top_eigenvalues(1, method=method, tol=1e-13, max_iter=budget, seed=100 + s)
                to_acc.append(hvps_to_accuracy(strict.history, lam1, args.accuracy))
                rule = op.top_eigenvalues(1, method=method, tol=args.accuracy, max_iter=budget, seed=100 + s)
                stop_hvp.append(rule.num_hvp)
                stop_err.append(abs(float(rule.eigenvalues[0]) - lam1) / abs(lam1))
            elapsed = time.perf_counter() - t0
            per_method[method] = {
                "to_accuracy": to_acc,
                "budget": budget,
                "stop_hvp": stop_hvp,
                "stop_err": stop_err,
                "ms_per_hvp": 1e3 * elapsed / max(op.num_hvp - start_hvp, 1),
            }
        rows.append(
            {
                "case": case.name,
                "dim": op.dim,
                "bn_mode": case.bn_mode,
                "lambda1": lam1,
                "ratio": lam2 / lam1,
                "reference": ref_kind,
                "reference_s": ref_s,
                "methods": per_method,
            }
        )
        print_row(rows[-1], args)
    return rows, machine_info()


def print_row(r: dict, args) -> None:
    print(
        f"{r['case']}: dim {r['dim']}, bn_mode {r['bn_mode']}, lambda_max {r['lambda1']:.6g}, "
        f"lambda_2/lambda_1 {r['ratio']:.4f} (reference: {r['reference']}, {r['reference_s']:.1f} s)"
    )
    for method, m in r["methods"].items():
        print(
            f"  {method:8s} HVPs to {args.accuracy:g}: {summary(m['to_accuracy'], m['budget']):>24s}   "
            f"tol={args.accuracy:g} rule: {statistics.median(m['stop_hvp']):g} HVPs, "
            f"max error {max(m['stop_err']):.1e}   ({m['ms_per_hvp']:.2f} ms/HVP)"
        )
    sys.stdout.flush()


def markdown(rows: list[dict], info: dict, args) -> str:
    acc = f"{args.accuracy:g}"
    ref = "dense Hessian (torch.func.jacrev(grad) + eigvalsh)" if args.reference == "dense" else "Lanczos to 1e-12"
    lines = [
        HEADING,
        "",
        f"HVPs until the top-eigenvalue estimate stays within {acc} relative of the reference "
        f"(median [min, max] over {args.starts} random starts), float64, `python benchmarks/hessian.py"
        f'{" --quick" if args.quick else ""}`. "tol={acc} rule": the method\'s own stopping rule at '
        f"`tol={acc}` (median HVPs, worst relative error reached). Reference: the "
        f"{ref}.",
        "",
        f"| model | dim | bn_mode | lambda_max | lambda_2/lambda_1 | method | HVPs to {acc} | "
        f"tol={acc} rule: HVPs | tol={acc} rule: max error | ms/HVP |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for method, m in r["methods"].items():
            lines.append(
                f"| {r['case']} | {r['dim']} | {r['bn_mode']} | {r['lambda1']:.5g} | {r['ratio']:.4f} | {method} | "
                f"{summary(m['to_accuracy'], m['budget'])} | {statistics.median(m['stop_hvp']):g} | "
                f"{max(m['stop_err']):.1e} | {m['ms_per_hvp']:.2f} |"
            )
    lines += ["", "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller models, fewer starts (smoke run)")
    ap.add_argument("--out", help="write/replace the 'Hessian: Lanczos vs power iteration' section of this file")
    ap.add_argument("--accuracy", type=float, default=1e-3, help="relative accuracy on the top eigenvalue")
    ap.add_argument("--starts", type=int, default=None, help="random start vectors per model (default 5; quick: 2)")
    ap.add_argument("--train-steps", type=int, default=200, help="SGD steps (lr 0.5) for the 'trained' models")
    ap.add_argument("--lanczos-budget", type=int, default=300, help="max Lanczos steps")
    ap.add_argument("--power-budget", type=int, default=3000, help="max power iterations")
    ap.add_argument("--reference", choices=["dense", "lanczos"], default="dense")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see above)")
    args = ap.parse_args(argv)
    if args.starts is None:
        args.starts = 2 if args.quick else 5
    if args.quick:
        args.train_steps = min(args.train_steps, 50)
    set_threads(args.threads)
    rows, info = run(args)
    text = markdown(rows, info, args)
    print()
    print(text)
    if args.out:
        replace_section(args.out, HEADING, text, "# normlab.analysis benchmarks")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
