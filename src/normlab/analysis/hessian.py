r"""The Hessian of the loss: products, extreme eigenvalues, trace, spectral density.

The loss is ``L(theta) = sum_i w_i loss_fn(model(x_i), y_i)`` over ``data``
(one batch ``(inputs, targets)`` or an iterable of batches), with
``w_i = size_i / total``: for a mean-reduced ``loss_fn`` it is the loss of
the concatenated data. Everything is built on Hessian-vector products (HVPs)
by double backward, ``H v = d/dtheta (dL/dtheta . v)``, one batch at a time
(memory of one batch's graph), never forming ``H``.

**bn_mode is required** (there is no silent default; the convention of every
analysis tool, see :func:`normlab.analysis.set_bn_mode`):

- ``"train"``: the training loss. The mode-dependent norms (what
  :func:`normlab.registry.mode_dependent` reports: BatchNorm and every
  registered norm of statistics kind ``"batch"``, per-sample norms tracking
  running statistics such as ``InstanceNorm(track_running_stats=True)``, user
  modules declaring ``normlab_statistics = "batch"``) normalize with the
  statistics of the data at hand (for batch norms the batch's own, so the
  curvature includes the coupling of the examples through the statistics).
  Running statistics are not used.
- ``"eval"``: the inference function, those norms use their running statistics.

In both modes every other module is in eval mode (dropout off), so the
function is deterministic. The model's training flags, parameters and buffers
(running statistics, ``num_batches_tracked``) are restored exactly after every
call, also when it raises. ``.grad`` fields are never touched.

Vectors live in the flat parameter space (the concatenation of the flattened
parameters, in ``params`` order, default ``[p for p in model.parameters() if
p.requires_grad]``) and in the parameters' dtype and device; compute in
float64 for reference-grade numbers.

Tools:

- :func:`hvp` and :class:`HessianOperator` (the reusable flat-vector operator
  that counts HVPs; all tools below are also its methods),
- :func:`top_eigenvalues`: top-k by Lanczos (full reorthogonalization) or
  power iteration (Hotelling deflation),
- :func:`extreme_eigenvalues`: largest and smallest (most negative),
- :func:`hutchinson_trace`: Hutchinson's estimator with a standard-error stop,
- :func:`spectral_density`: stochastic Lanczos quadrature (SLQ),
- :func:`plot_density`, :func:`plot_eigenvalues`: matplotlib helpers.

Unlike PyHessian (the usual tool): the mode is explicit rather than forced to
eval, the SLQ density is normalized to integrate to 1, and every result
reports the number of HVPs it used.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ._common import BNMode, LossFn, as_batches, batch_weights, check_bn_mode, params_of, preserved_state, set_bn_mode

__all__ = [
    "ExtremeEigenvalues",
    "HessianOperator",
    "SpectralDensity",
    "TopEigenvalues",
    "TraceEstimate",
    "extreme_eigenvalues",
    "hutchinson_trace",
    "hvp",
    "plot_density",
    "plot_eigenvalues",
    "spectral_density",
    "top_eigenvalues",
]

_LANCZOS_MAX_ITER = 100
_POWER_MAX_ITER = 500


# --------------------------------------------------------------------------- results


@dataclass
class TopEigenvalues:
    """Result of :func:`top_eigenvalues`.

    ``eigenvalues``: ``(k,)``, descending (CPU, parameters' dtype).
    ``eigenvectors``: ``(k, dim)`` unit flat vectors (parameters' device and
    dtype), row ``i`` for ``eigenvalues[i]``. ``num_hvp``: Hessian-vector
    products used. ``converged``: the stopping rule was met for all k.
    ``history``: the estimate being refined after each HVP (Lanczos: the top
    Ritz value; power: the current Rayleigh quotient).
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    num_hvp: int
    converged: bool
    method: str
    history: list[float] = field(default_factory=list, repr=False)


@dataclass
class ExtremeEigenvalues:
    """Result of :func:`extreme_eigenvalues`: the largest and the smallest (most negative) eigenvalue."""

    largest: float
    smallest: float
    largest_vector: Tensor = field(repr=False)
    smallest_vector: Tensor = field(repr=False)
    num_hvp: int
    converged: bool
    method: str

    @property
    def negative_ratio(self) -> float:
        """``max(-smallest, 0) / largest``: negative curvature relative to the top (0 where the Hessian is PSD)."""
        return abs(min(self.smallest, 0.0)) / self.largest if self.largest > 0 else math.inf


@dataclass
class TraceEstimate:
    """Result of :func:`hutchinson_trace`: ``trace`` +- ``std_error`` (standard error of the mean)."""

    trace: float
    std_error: float
    num_samples: int
    num_hvp: int
    converged: bool
    samples: Tensor = field(repr=False)  # z^T H z for every probe, float64


@dataclass
class SpectralDensity:
    """Result of :func:`spectral_density`.

    ``density`` on ``grid`` integrates to 1 (trapezoid rule). ``nodes`` and
    ``weights`` are the Gauss quadrature nodes (Ritz values) and weights of all
    probes, flat; ``weights`` sum to 1 (each probe's sum to ``1/num_probes``);
    ``probe`` says which probe each node belongs to. ``sigma`` is the absolute
    Gaussian width used. ``mass`` is the trapezoid integral of the smoothed
    density on the grid *before* normalization: near 1 when the grid covers the
    spectrum and resolves ``sigma``.
    """

    grid: Tensor
    density: Tensor
    nodes: Tensor
    weights: Tensor
    probe: Tensor
    sigma: float
    num_hvp: int
    mass: float
    dim: int

    @property
    def mean(self) -> float:
        """``sum(weights * nodes)``: an estimate of ``trace(H) / dim``."""
        return float((self.weights * self.nodes).sum())


# --------------------------------------------------------------------------- the operator


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    """The CPU generator every random draw comes from (random vectors are drawn on CPU, then moved)."""
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


class HessianOperator:
    """The Hessian of the loss over ``data`` as a linear operator on flat vectors.

    Holds the model, loss, data (materialized once: an iterator is consumed
    here), ``bn_mode`` and the parameters; :meth:`matvec` returns ``H v`` for a
    flat ``v`` of length :attr:`dim` and counts HVPs in :attr:`num_hvp` (one
    per product over the whole data, whatever the number of batches). The
    analysis methods (:meth:`top_eigenvalues`, ...) are the module functions
    with this operator reused, so they share the data and the counter.

    Example::

        >>> import torch
        >>> from normlab.analysis import HessianOperator
        >>> model = torch.nn.Linear(3, 1)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> op = HessianOperator(model, torch.nn.functional.mse_loss, (x, y), bn_mode="eval")
        >>> op.matvec(torch.ones(op.dim)).shape, op.num_hvp
        (torch.Size([4]), 1)
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data,
        *,
        bn_mode: BNMode,
        params: Sequence[Tensor] | None = None,
    ) -> None:
        check_bn_mode(bn_mode)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(outputs, targets), got {type(loss_fn).__name__}")
        batches = [b for b in as_batches(data) if b[0].dim() == 0 or b[0].shape[0] > 0]
        if not batches:
            raise ValueError("data has no samples: every batch is empty")
        self.model = model
        self.loss_fn = loss_fn
        self.bn_mode = bn_mode
        self.batches = batches
        self.weights = batch_weights(batches)
        self.params = params_of(model, params)
        for i, p in enumerate(self.params):
            if not isinstance(p, Tensor) or not p.is_floating_point() or not p.requires_grad:
                raise ValueError(f"params[{i}] must be a floating-point tensor with requires_grad=True")
        self.dtype = self.params[0].dtype
        for p in self.params[1:]:
            self.dtype = torch.promote_types(self.dtype, p.dtype)
        self.device = self.params[0].device
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.dim = sum(self.numels)
        self.num_hvp = 0
        self.last_loss: float | None = None  # the loss at the last HVP (a by-product of its forward)
        self._depth = 0

    def __repr__(self) -> str:
        return (
            f"HessianOperator(dim={self.dim}, bn_mode={self.bn_mode!r}, batches={len(self.batches)}, "
            f"dtype={self.dtype}, num_hvp={self.num_hvp})"
        )

    # -- flat <-> per-parameter

    def flatten(self, tensors: Sequence[Tensor]) -> Tensor:
        """Concatenate per-parameter tensors into one flat vector (checks count and shapes)."""
        if len(tensors) != len(self.params):
            raise ValueError(f"expected {len(self.params)} tensors (one per parameter), got {len(tensors)}")
        for i, (t, shape) in enumerate(zip(tensors, self.shapes, strict=True)):
            if not isinstance(t, Tensor):
                raise TypeError(f"vec[{i}] must be a tensor, got {type(t).__name__}")
            if t.shape != shape:
                raise ValueError(f"vec[{i}] has shape {tuple(t.shape)}, expected {tuple(shape)} (params[{i}])")
        return torch.cat([t.reshape(-1).to(device=self.device, dtype=self.dtype) for t in tensors])

    def unflatten(self, flat: Tensor) -> list[Tensor]:
        """Split a flat vector into tensors shaped (and typed) like the parameters."""
        flat = self._check_flat(flat)
        parts = torch.split(flat, self.numels)
        return [t.view(s).to(p.dtype) for t, s, p in zip(parts, self.shapes, self.params, strict=True)]

    def _check_flat(self, v) -> Tensor:
        if not isinstance(v, Tensor):
            raise TypeError(f"expected a flat tensor of {self.dim} elements, got {type(v).__name__}")
        if v.dim() != 1 or v.numel() != self.dim:
            raise ValueError(
                f"expected a flat vector of {self.dim} elements (the number of analyzed parameters), "
                f"got shape {tuple(v.shape)}"
            )
        return v.to(device=self.device, dtype=self.dtype)

    # -- the product

    @contextlib.contextmanager
    def prepared(self) -> Iterator[HessianOperator]:
        """Put the model in ``bn_mode`` once for many products; its state is restored on exit (re-entrant)."""
        with contextlib.ExitStack() as stack:
            if self._depth == 0:
                stack.enter_context(preserved_state(self.model))
                set_bn_mode(self.model, self.bn_mode)
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1

    def matvec(self, v: Tensor) -> Tensor:
        """``H v`` for a flat ``v`` (length :attr:`dim`); one HVP, batch by batch."""
        v = self._check_flat(v)
        vs = [
            t.view(s).to(p.dtype) for t, s, p in zip(torch.split(v, self.numels), self.shapes, self.params, strict=True)
        ]
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        total = 0.0
        with self.prepared(), torch.enable_grad():
            for (x, y), w in zip(self.batches, self.weights, strict=True):
                loss = self.loss_fn(self.model(x), y)
                if not isinstance(loss, Tensor) or loss.dim() != 0:
                    shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
                    raise ValueError(f"loss_fn must return a scalar tensor (use a mean/sum reduction), got {shape}")
                total += w * float(loss.detach())
                if not loss.requires_grad:
                    continue  # the loss does not depend on the parameters: H = 0
                grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
                dot = sum((g * t).sum() for g, t in zip(grads, vs, strict=True) if g is not None)
                if not isinstance(dot, Tensor) or not dot.requires_grad:
                    continue  # the gradient is constant in the parameters (e.g. a linear loss)
                hv = torch.autograd.grad(dot, self.params, allow_unused=True)
                flat = torch.cat(
                    [
                        (h if h is not None else torch.zeros_like(p)).reshape(-1).to(self.dtype)
                        for h, p in zip(hv, self.params, strict=True)
                    ]
                )
                out.add_(flat, alpha=w)
        self.num_hvp += 1
        self.last_loss = total
        if not bool(torch.isfinite(out).all()):
            # e.g. a diverged model: say so here instead of failing later inside eigh.
            raise ValueError(
                f"the Hessian-vector product is not finite (loss {total:g}); the model's parameters or loss "
                "have overflowed (a diverged run?)"
            )
        return out

    __call__ = matvec

    def random_vector(self, generator: torch.Generator, kind: str = "gaussian") -> Tensor:
        """A random flat vector: ``"gaussian"`` (unit norm) or ``"rademacher"`` (+-1 entries)."""
        if kind == "rademacher":
            z = torch.randint(0, 2, (self.dim,), generator=generator, dtype=torch.int8).to(self.dtype) * 2 - 1
        else:
            z = torch.randn(self.dim, generator=generator, dtype=torch.float64).to(self.dtype)
            z = z / z.norm()
        return z.to(self.device)

    # -- analyses (the module functions with this operator)

    def top_eigenvalues(self, k: int = 1, **kwargs) -> TopEigenvalues:
        """:func:`top_eigenvalues` on this operator."""
        return _top_eigenvalues(self, k, **kwargs)

    def extreme_eigenvalues(self, **kwargs) -> ExtremeEigenvalues:
        """:func:`extreme_eigenvalues` on this operator."""
        return _extreme_eigenvalues(self, **kwargs)

    def trace(self, **kwargs) -> TraceEstimate:
        """:func:`hutchinson_trace` on this operator."""
        return _hutchinson(self, **kwargs)

    def spectral_density(self, **kwargs) -> SpectralDensity:
        """:func:`spectral_density` on this operator."""
        return _slq(self, **kwargs)


def hvp(
    model: nn.Module,
    loss_fn: LossFn,
    data,
    vec: Tensor | Sequence[Tensor],
    *,
    bn_mode: BNMode,
    params: Sequence[Tensor] | None = None,
) -> Tensor | list[Tensor]:
    """Hessian-vector product ``H vec`` of the loss over ``data`` by double backward.

    ``vec`` is either a **flat vector** (a 1-D tensor of ``dim`` elements, the
    parameters flattened and concatenated in ``params`` order), and the result
    is flat; or a **list of tensors** shaped like ``params``, and the result is
    such a list. Over an iterable of batches the product is ``sum_i w_i H_i
    vec`` with ``w_i = size_i / total``.

    Example::

        >>> import torch
        >>> from normlab.analysis import hvp
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> x, y = torch.eye(2), torch.zeros(2, 1)
        >>> loss = lambda out, t: 0.5 * ((out - t) ** 2).mean()  # H = X^T X / N
        >>> hvp(model, loss, (x, y), torch.tensor([1.0, 0.0]), bn_mode="eval")
        tensor([0.5000, 0.0000])
    """
    op = HessianOperator(model, loss_fn, data, bn_mode=bn_mode, params=params)
    if isinstance(vec, Tensor):
        return op.matvec(vec)
    if isinstance(vec, (list, tuple)):
        return op.unflatten(op.matvec(op.flatten(vec)))
    raise TypeError(
        f"vec must be a flat tensor or a list of tensors shaped like the parameters, got {type(vec).__name__}"
    )


# --------------------------------------------------------------------------- Lanczos


def _tridiag(alphas: Sequence[float], betas: Sequence[float]) -> Tensor:
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if len(alphas) > 1:
        b = torch.tensor(betas[: len(alphas) - 1], dtype=torch.float64)
        t = t + torch.diag(b, 1) + torch.diag(b, -1)
    return t


def _orthogonalize(w: Tensor, basis: Tensor) -> Tensor:
    # Classical Gram-Schmidt twice ("twice is enough", Kahan/Parlett): keeps the
    # Lanczos basis orthogonal to working precision, so no ghost eigenvalues.
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def _lanczos(op: HessianOperator, v0: Tensor, num_steps: int, *, generator, restart: bool, on_step=None):
    """Lanczos with full reorthogonalization from ``v0``.

    Returns ``(alphas, betas, Q)``: ``T = tridiag(alphas, betas[:-1])`` and the
    basis rows ``Q``, with ``H Q^T = Q^T T + betas[-1] q_next e_last^T``.
    ``on_step(alphas, betas, breakdown)`` is called after each product and
    stops the iteration by returning True. On breakdown (``beta ~ 0``: the
    Krylov space is invariant) the iteration stops, or, with ``restart``,
    continues from a random vector orthogonal to the basis (``beta = 0`` in
    ``T``), so that eigenvalues absent from ``v0`` (or repeated ones) are
    found too.
    """
    n = op.dim
    m = min(int(num_steps), n)
    # The basis grows by doubling: memory follows the steps taken, not the budget.
    q = torch.empty(min(m, 16), n, dtype=op.dtype, device=op.device)
    nv = v0.norm()
    if not torch.isfinite(nv) or nv == 0:
        raise ValueError("the starting vector must be finite and non-zero")
    q[0] = v0 / nv
    alphas: list[float] = []
    betas: list[float] = []
    # Breakdown threshold relative to a Gershgorin bound on ||T|| (about ||H||):
    # after a true invariant subspace, beta is round-off, ~eps ||H||.
    tiny = torch.finfo(op.dtype).eps ** 0.75
    scale = 0.0
    with op.prepared():
        for j in range(m):
            w = op.matvec(q[j])
            if j > 0 and betas[j - 1] != 0.0:
                w = w - betas[j - 1] * q[j - 1]
            a = torch.dot(q[j], w)
            w = _orthogonalize(w - a * q[j], q[: j + 1])
            b = float(w.norm())
            alphas.append(float(a))
            betas.append(b)
            scale = max(scale, abs(alphas[-1]) + b + (betas[j - 1] if j > 0 else 0.0))
            breakdown = b <= tiny * scale
            if on_step is not None and on_step(alphas, betas, breakdown and j + 1 < m):
                break
            if j + 1 == m:
                break
            if j + 1 == q.shape[0]:
                q = torch.cat([q, torch.empty(min(q.shape[0], m - q.shape[0]), n, dtype=q.dtype, device=q.device)])
            if not breakdown:
                q[j + 1] = w / b
                continue
            if not restart:
                break
            r = _orthogonalize(op.random_vector(generator), q[: j + 1])
            nr = r.norm()
            if nr <= tiny:
                break
            q[j + 1] = r / nr
            betas[j] = 0.0
    return alphas, betas, q[: len(alphas)]


def _ritz(alphas, betas):
    """Ritz values (ascending), eigenvectors of T and residual norms ``|beta_last * s_last|``."""
    theta, s = torch.linalg.eigh(_tridiag(alphas, betas))
    res = abs(betas[-1]) * s[-1].abs()
    return theta, s, res


def _ritz_vectors(s_cols: Tensor, q: Tensor) -> Tensor:
    y = s_cols.T.to(q.dtype).to(q.device) @ q
    return y / y.norm(dim=1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)


def _start_vector(op: HessianOperator, init, generator) -> Tensor:
    if init is None:
        return op.random_vector(generator)
    if not isinstance(init, Tensor):
        raise TypeError(f"init must be a tensor (flat vector or rows of flat vectors), got {type(init).__name__}")
    rows = init.reshape(-1, init.shape[-1]) if init.dim() > 0 else init.reshape(1, 1)
    v = rows.sum(0) if rows.shape[-1] == op.dim else None
    if v is None:
        raise ValueError(
            f"init must have {op.dim} elements per row (the number of analyzed parameters), "
            f"got shape {tuple(init.shape)}"
        )
    return op._check_flat(v)


def _lanczos_top(op, k, tol, max_iter, init, generator, ends=False):
    """Shared by top-k and extreme eigenvalues: stop when the wanted Ritz pairs have small residuals."""
    history: list[float] = []
    n = op.dim
    need = min(k, n)

    def wanted(theta):
        m = theta.numel()
        if ends:
            return torch.tensor([m - 1, 0])
        return torch.arange(m - 1, max(m - 1 - need, -1), -1)

    def done(alphas, betas, breakdown):
        theta, _, res = _ritz(alphas, betas)
        history.append(float(theta[-1]))
        if len(alphas) < need or breakdown:
            # After a breakdown all Ritz pairs are exact, but the complement of the
            # invariant subspace found may hold larger (or repeated) eigenvalues
            # that the start vector missed: restart and look there before stopping.
            return False
        norm = float(theta.abs().max())
        return bool((res[wanted(theta)] <= tol * norm).all())

    alphas, betas, q = _lanczos(
        op, _start_vector(op, init, generator), max_iter, generator=generator, restart=True, on_step=done
    )
    theta, s, res = _ritz(alphas, betas)
    idx = wanted(theta)
    converged = len(alphas) >= need and bool((res[idx] <= tol * float(theta.abs().max())).all())
    return theta[idx], _ritz_vectors(s[:, idx], q), converged, history


# --------------------------------------------------------------------------- power iteration


def _power(op, k, tol, max_iter, init, generator, *, shift=0.0, largest=True):
    """Power iteration on ``H - shift I`` with Hotelling deflation; eigenpairs of ``H``.

    Power iteration finds the eigenvalue of largest *magnitude*. With
    ``largest=False`` that is what is returned. With ``largest=True`` (the k
    algebraically largest): if the dominant one is negative, it is the smallest
    eigenvalue of the (remaining) spectrum; the iteration then goes on with
    ``shift`` = that value, so the spectrum of ``H - shift I`` is >= 0 and its
    dominant eigenvalue is the largest of ``H``. The HVPs spent on finding the
    shift are counted.
    """
    n = op.dim
    vals: list[float] = []
    vecs: list[Tensor] = []
    history: list[float] = []
    shifted = False
    all_converged = True
    rows = None
    if init is not None:
        _start_vector(op, init, generator)  # validates
        rows = init.reshape(-1, op.dim)

    def apply(v: Tensor) -> Tensor:
        w = op.matvec(v)
        if shift != 0.0:
            w = w - shift * v
        for lam, u in zip(vals, vecs, strict=True):  # Hotelling: H - sum (lambda_i - shift) u_i u_i^T
            w = w - (lam - shift) * torch.dot(u, v) * u
        return w

    def project(v: Tensor) -> Tensor:
        # Keep the iterate out of the found eigenvectors (round-off would otherwise
        # let them back in through the deflated operator's zero eigenvalue).
        return _orthogonalize(v, torch.stack(vecs)) if vecs else v

    attempt = 0
    with op.prepared():
        while len(vals) < min(k, n):
            v = rows[attempt % rows.shape[0]] if rows is not None and attempt < rows.shape[0] else None
            v = op._check_flat(v) if v is not None else op.random_vector(generator)
            attempt += 1
            v = project(v)
            v = v / v.norm().clamp_min(torch.finfo(op.dtype).tiny)
            prev = None
            converged = False
            for _ in range(int(max_iter)):
                w = apply(v)
                lam = float(torch.dot(v, w)) + shift
                history.append(lam)
                if prev is not None and abs(lam - prev) <= tol * abs(lam):
                    converged = True
                    break
                nw = w.norm()
                if nw <= torch.finfo(op.dtype).tiny:
                    converged = True  # v is in the null space of the deflated operator
                    break
                v = project(w / nw)
                v = v / v.norm().clamp_min(torch.finfo(op.dtype).tiny)
                prev = lam
            if largest and not shifted and lam - shift < 0 and converged:
                shift, shifted = lam, True  # found the bottom of the spectrum: shift and search again
                continue
            all_converged &= converged
            vals.append(lam)
            vecs.append(v)
    order = sorted(range(len(vals)), key=lambda i: -vals[i])
    return (
        torch.tensor([vals[i] for i in order], dtype=torch.float64),
        torch.stack([vecs[i] for i in order]),
        all_converged,
        history,
    )


# --------------------------------------------------------------------------- eigenvalues


def _check_method(method: str) -> None:
    if method not in ("lanczos", "power"):
        raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")


def _check_positive(name: str, value, minimum: float = 0.0, integer: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not value > minimum:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} > {minimum}, got {value!r}")


def _top_eigenvalues(op, k=1, *, method="lanczos", tol=1e-5, max_iter=None, init=None, seed=0, generator=None):
    _check_method(method)
    _check_positive("k", k, integer=True)
    _check_positive("tol", tol)
    max_iter = max_iter if max_iter is not None else (_LANCZOS_MAX_ITER if method == "lanczos" else _POWER_MAX_ITER)
    _check_positive("max_iter", max_iter, integer=True)
    gen = _generator(seed, generator)
    start = op.num_hvp
    if method == "lanczos":
        vals, vecs, converged, history = _lanczos_top(op, k, tol, max(max_iter, k), init, gen)
    else:
        vals, vecs, converged, history = _power(op, k, tol, max_iter, init, gen)
    return TopEigenvalues(
        eigenvalues=vals.to(op.dtype),
        eigenvectors=vecs,
        num_hvp=op.num_hvp - start,
        converged=converged,
        method=method,
        history=history,
    )


def top_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    data,
    *,
    bn_mode: BNMode,
    k: int = 1,
    method: str = "lanczos",
    tol: float = 1e-5,
    max_iter: int | None = None,
    init: Tensor | None = None,
    params: Sequence[Tensor] | None = None,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
) -> TopEigenvalues:
    r"""The ``k`` largest (algebraic) eigenvalues of the Hessian and their eigenvectors.

    - ``method="lanczos"``: Lanczos with full reorthogonalization (twice), from
      a random unit vector (or ``init``; several rows are summed). After each
      HVP the Ritz pairs of the tridiagonal ``T`` are computed; it stops when
      the top-k residuals ``||H y - theta y|| = |beta_m s_m|`` are all
      ``<= tol * max|theta|`` (then each eigenvalue is within that of a true
      one). On breakdown it restarts from a random vector orthogonal to the
      basis. ``max_iter``: total Lanczos steps (default 100, at most ``dim``);
      memory: one ``dim`` vector per step taken.
    - ``method="power"``: power iteration, one eigenpair after another with
      Hotelling deflation ``H - sum_i lambda_i u_i u_i^T`` (and the iterate
      kept orthogonal to the found ``u_i``); each stops when the Rayleigh
      quotient's relative change is ``<= tol`` (a weaker rule than Lanczos':
      the error can be larger than the change when eigenvalues are close).
      If the dominant eigenvalue is negative it shifts by it (see the
      source) so that the result is still the *largest*. ``max_iter``:
      iterations per eigenpair (default 500).

    ``init``: warm start (a flat vector or ``(m, dim)`` rows). ``seed`` /
    ``generator``: the random start vectors (CPU generator). ``num_hvp`` in
    the result counts every HVP used.

    Example::

        >>> import torch
        >>> from normlab.analysis import top_eigenvalues
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> x = torch.randn(64, 5, dtype=torch.float64)
        >>> model = torch.nn.Linear(5, 1, bias=False).double()
        >>> loss = lambda out, t: 0.5 * ((out - t) ** 2).mean()  # H = X^T X / N
        >>> res = top_eigenvalues(model, loss, (x, torch.zeros(64, 1, dtype=torch.float64)), bn_mode="eval", k=2)
        >>> torch.allclose(res.eigenvalues, torch.linalg.eigvalsh(x.T @ x / 64)[-2:].flip(0))
        True
    """
    op = HessianOperator(model, loss_fn, data, bn_mode=bn_mode, params=params)
    return _top_eigenvalues(op, k, method=method, tol=tol, max_iter=max_iter, init=init, seed=seed, generator=generator)


def _extreme_eigenvalues(op, *, method="lanczos", tol=1e-5, max_iter=None, seed=0, generator=None):
    _check_method(method)
    _check_positive("tol", tol)
    max_iter = max_iter if max_iter is not None else (_LANCZOS_MAX_ITER if method == "lanczos" else _POWER_MAX_ITER)
    _check_positive("max_iter", max_iter, integer=True)
    gen = _generator(seed, generator)
    start = op.num_hvp
    if method == "lanczos":
        vals, vecs, converged, _ = _lanczos_top(op, 2, tol, max_iter, None, gen, ends=True)
        top, bottom = float(vals[0]), float(vals[1])
        top_v, bottom_v = vecs[0], vecs[1]
    else:
        # The dominant eigenvalue by magnitude is one end of the spectrum; the
        # dominant one of H - lambda_d I is then the other end minus lambda_d.
        with op.prepared():
            v1, u1, c1, _ = _power(op, 1, tol, max_iter, None, gen, largest=False)
            lam_d = float(v1[0])
            v2, u2, c2, _ = _power(op, 1, tol, max_iter, None, gen, shift=lam_d, largest=False)
        other = float(v2[0])
        converged = c1 and c2
        (top, top_v), (bottom, bottom_v) = sorted([(lam_d, u1[0]), (other, u2[0])], key=lambda t: -t[0])
    return ExtremeEigenvalues(
        largest=top,
        smallest=bottom,
        largest_vector=top_v,
        smallest_vector=bottom_v,
        num_hvp=op.num_hvp - start,
        converged=converged,
        method=method,
    )


def extreme_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    data,
    *,
    bn_mode: BNMode,
    method: str = "lanczos",
    tol: float = 1e-5,
    max_iter: int | None = None,
    params: Sequence[Tensor] | None = None,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
) -> ExtremeEigenvalues:
    """The largest and the smallest (most negative) eigenvalue of the Hessian.

    ``"lanczos"``: one Lanczos run until both extreme Ritz pairs have residual
    ``<= tol * max|theta|``. ``"power"``: power iteration for the dominant
    eigenvalue ``lambda_d`` (largest magnitude), then on ``H - lambda_d I`` for
    the other end. Negative curvature (``smallest < 0``) means the point is
    not a local minimum of the loss restricted to these parameters.

    Example::

        >>> import torch
        >>> from normlab.analysis import extreme_eigenvalues
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
        >>> x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
        >>> r = extreme_eigenvalues(model, torch.nn.functional.mse_loss, (x, y), bn_mode="eval")
        >>> r.smallest <= r.largest
        True
    """
    op = HessianOperator(model, loss_fn, data, bn_mode=bn_mode, params=params)
    return _extreme_eigenvalues(op, method=method, tol=tol, max_iter=max_iter, seed=seed, generator=generator)


# --------------------------------------------------------------------------- trace


def _hutchinson(op, *, tol=1e-2, max_samples=1000, min_samples=10, seed=0, generator=None):
    _check_positive("tol", tol)
    _check_positive("min_samples", min_samples, minimum=1, integer=True)
    _check_positive("max_samples", max_samples, minimum=1, integer=True)
    if max_samples < min_samples:
        raise ValueError(f"max_samples ({max_samples}) must be >= min_samples ({min_samples})")
    gen = _generator(seed, generator)
    start = op.num_hvp
    samples: list[float] = []
    converged = False
    mean = se = 0.0
    with op.prepared():
        for i in range(int(max_samples)):
            z = op.random_vector(gen, "rademacher")
            samples.append(float(torch.dot(z, op.matvec(z))))
            if i + 1 >= min_samples:
                s = torch.tensor(samples, dtype=torch.float64)
                mean = float(s.mean())
                se = float(s.std(correction=1)) / math.sqrt(len(samples))
                if se <= tol * abs(mean):
                    converged = True
                    break
    return TraceEstimate(
        trace=mean,
        std_error=se,
        num_samples=len(samples),
        num_hvp=op.num_hvp - start,
        converged=converged,
        samples=torch.tensor(samples, dtype=torch.float64),
    )


def hutchinson_trace(
    model: nn.Module,
    loss_fn: LossFn,
    data,
    *,
    bn_mode: BNMode,
    tol: float = 1e-2,
    max_samples: int = 1000,
    min_samples: int = 10,
    params: Sequence[Tensor] | None = None,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
) -> TraceEstimate:
    r"""Hutchinson's estimate of ``trace(H) = E[z^T H z]`` with Rademacher probes ``z``.

    Draws probes until at least ``min_samples`` (>= 2) are in and the
    standard error of the mean, ``std(samples) / sqrt(n)``, is ``<= tol *
    |trace|`` (a relative tolerance), or ``max_samples`` is reached
    (``converged=False``). One HVP per probe. The estimator's variance is
    ``2 sum_{i != j} H_ij^2``: small when ``H`` is nearly diagonal.

    Example::

        >>> import torch
        >>> from normlab.analysis import hutchinson_trace
        >>> x = torch.randn(32, 4, dtype=torch.float64)
        >>> model = torch.nn.Linear(4, 1, bias=False).double()
        >>> loss = lambda out, t: 0.5 * ((out - t) ** 2).mean()  # H = X^T X / N
        >>> est = hutchinson_trace(model, loss, (x, torch.zeros(32, 1, dtype=torch.float64)), bn_mode="eval")
        >>> abs(est.trace - float((x ** 2).sum() / 32)) < 4 * est.std_error
        True
    """
    op = HessianOperator(model, loss_fn, data, bn_mode=bn_mode, params=params)
    return _hutchinson(op, tol=tol, max_samples=max_samples, min_samples=min_samples, seed=seed, generator=generator)


# --------------------------------------------------------------------------- spectral density


def _slq(op, *, num_probes=4, num_steps=80, sigma=0.01, sigma_relative=True, grid=1000, seed=0, generator=None):
    _check_positive("num_probes", num_probes, integer=True)
    _check_positive("num_steps", num_steps, integer=True)
    _check_positive("sigma", sigma)
    gen = _generator(seed, generator)
    start = op.num_hvp
    nodes, weights, probe = [], [], []
    with op.prepared():
        for p in range(num_probes):
            v = op.random_vector(gen, "rademacher")
            alphas, betas, _ = _lanczos(op, v, num_steps, generator=gen, restart=False)
            # Gauss quadrature of v^T f(H) v / v^T v: nodes = eigenvalues of T,
            # weights = squared first components of its eigenvectors (sum to 1).
            theta, s = torch.linalg.eigh(_tridiag(alphas, betas))
            nodes.append(theta)
            weights.append(s[0] ** 2 / num_probes)
            probe.append(torch.full((theta.numel(),), p, dtype=torch.long))
    nodes_t, weights_t = torch.cat(nodes), torch.cat(weights)
    weights_t = weights_t / weights_t.sum()  # exact 1 up to round-off already; remove it
    lo, hi = float(nodes_t.min()), float(nodes_t.max())
    if sigma_relative:
        width = hi - lo
        if width <= 0:
            width = max(abs(lo), abs(hi)) or 1.0
        sig = sigma * width
    else:
        sig = float(sigma)
    if isinstance(grid, Tensor):
        g = grid.detach().to("cpu", torch.float64).reshape(-1)
        if g.numel() < 2 or not bool((g[1:] > g[:-1]).all()):
            raise ValueError("grid must be an increasing 1-D tensor of at least 2 points")
    elif isinstance(grid, int) and not isinstance(grid, bool) and grid >= 2:
        g = torch.linspace(lo - 6 * sig, hi + 6 * sig, grid, dtype=torch.float64)
    else:
        raise ValueError(f"grid must be a number of points (>= 2) or an increasing 1-D tensor, got {grid!r}")
    # Smoothed density: sum_j w_j N(t; theta_j, sig^2), blockwise to bound memory.
    dens = torch.zeros_like(g)
    norm = 1.0 / (sig * math.sqrt(2 * math.pi))
    for chunk in torch.split(torch.arange(nodes_t.numel()), 4096):
        d = (g[:, None] - nodes_t[chunk][None, :]) / sig
        dens += (torch.exp(-0.5 * d * d) * weights_t[chunk][None, :]).sum(1) * norm
    mass = float(torch.trapezoid(dens, g))
    if mass <= 0:
        raise ValueError("the smoothed density is zero on the whole grid: the grid does not cover the spectrum")
    if abs(mass - 1.0) > 1e-2:
        warnings.warn(
            f"the smoothed density has mass {mass:.4f} on the grid before normalization: the grid does not cover "
            f"[{lo:.4g}, {hi:.4g}] +- 6 sigma or is coarser than sigma={sig:.3g}; it was renormalized to 1",
            stacklevel=3,
        )
    return SpectralDensity(
        grid=g,
        density=dens / mass,
        nodes=nodes_t,
        weights=weights_t,
        probe=torch.cat(probe),
        sigma=sig,
        num_hvp=op.num_hvp - start,
        mass=mass,
        dim=op.dim,
    )


def spectral_density(
    model: nn.Module,
    loss_fn: LossFn,
    data,
    *,
    bn_mode: BNMode,
    num_probes: int = 4,
    num_steps: int = 80,
    sigma: float = 0.01,
    sigma_relative: bool = True,
    grid: int | Tensor = 1000,
    params: Sequence[Tensor] | None = None,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
) -> SpectralDensity:
    r"""Eigenvalue density of the Hessian by stochastic Lanczos quadrature (Lin et al. 2016; Ghorbani et al. 2019).

    For each of ``num_probes`` Rademacher probes ``v``, ``num_steps`` Lanczos
    steps (full reorthogonalization, stopping early on breakdown, at most
    ``dim``) give a tridiagonal ``T = S diag(theta) S^T``; the probe's spectral
    measure ``v^T delta(H - t) v / v^T v`` is approximated by nodes ``theta``
    with weights ``S[0]^2``. The density is the average over probes, each node
    smoothed by a Gaussian of width ``sigma``:
    ``phi(t) = sum_j w_j N(t; theta_j, sigma^2)``.

    ``sigma`` is **relative** to the spread of the nodes (``max - min``) by
    default; ``sigma_relative=False`` makes it absolute (use it to compare
    densities of several models on one axis). ``grid``: number of points of
    an automatic grid over ``[min - 6 sigma, max + 6 sigma]``, or the grid
    itself. The density is normalized to integrate to 1 on the grid
    (trapezoid rule); ``mass`` reports the integral before normalization and a
    warning is issued when it is off by more than 1% (grid too short or too
    coarse). Costs ``num_probes * num_steps`` HVPs and ``num_steps * dim``
    memory.

    Example::

        >>> import torch
        >>> from normlab.analysis import spectral_density
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
        >>> x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
        >>> d = spectral_density(model, torch.nn.functional.mse_loss, (x, y), bn_mode="eval", num_steps=10)
        >>> round(float(torch.trapezoid(d.density, d.grid)), 6)
        1.0
    """
    op = HessianOperator(model, loss_fn, data, bn_mode=bn_mode, params=params)
    return _slq(
        op,
        num_probes=num_probes,
        num_steps=num_steps,
        sigma=sigma,
        sigma_relative=sigma_relative,
        grid=grid,
        seed=seed,
        generator=generator,
    )


# --------------------------------------------------------------------------- plots


def _new_axes(ax=None, figsize=(5.0, 3.5)):
    """``ax`` or fresh axes on a new figure (no pyplot state, nothing shown; saved with the Agg canvas)."""
    if ax is not None:
        return ax
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig.add_subplot()


def plot_density(result: SpectralDensity, ax=None, *, log: bool = True, label: str | None = None, nodes: bool = False):
    """Plot an SLQ density (log scale by default, as in the literature).

    Draws into ``ax`` if given (call again to overlay another model), else on
    a new figure. ``nodes=True`` also marks the quadrature nodes. Returns the
    ``matplotlib.figure.Figure`` (no pyplot state, no ``show``).
    """
    if not isinstance(result, SpectralDensity):
        raise TypeError(f"expected a SpectralDensity (from spectral_density), got {type(result).__name__}")
    ax = _new_axes(ax)
    x, y = result.grid.numpy(), result.density.numpy()
    if log:
        ax.semilogy(x, y, label=label)
    else:
        ax.plot(x, y, label=label)
    if nodes:
        ax.plot(
            result.nodes.numpy(),
            [0.0 if not log else max(float(y.max()) * 1e-6, 1e-300)] * result.nodes.numel(),
            "|",
            color="k",
            alpha=0.5,
        )
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(f"Hessian spectral density (SLQ, sigma={result.sigma:.3g}, {result.num_hvp} HVPs)")
    if label is not None:
        ax.legend()
    return ax.figure


def plot_eigenvalues(result, ax=None, *, label: str | None = None):
    """Plot eigenvalues by rank: a :class:`TopEigenvalues`, an :class:`ExtremeEigenvalues` or a 1-D sequence.

    Draws into ``ax`` if given (call again to overlay another model), else on
    a new figure. Returns the ``matplotlib.figure.Figure``.
    """
    if isinstance(result, TopEigenvalues):
        vals = result.eigenvalues.double().cpu().numpy()
        title = f"top eigenvalues ({result.method}, {result.num_hvp} HVPs)"
    elif isinstance(result, ExtremeEigenvalues):
        vals, title = [result.largest, result.smallest], f"largest and smallest eigenvalue ({result.num_hvp} HVPs)"
    elif isinstance(result, (Tensor, list, tuple)):
        vals, title = torch.as_tensor(result, dtype=torch.float64).reshape(-1).numpy(), "eigenvalues"
    else:
        raise TypeError(
            f"expected TopEigenvalues, ExtremeEigenvalues or a sequence of numbers, got {type(result).__name__}"
        )
    ax = _new_axes(ax)
    ax.plot(range(1, len(vals) + 1), vals, "o-", label=label)
    ax.axhline(0.0, color="0.7", lw=0.8)
    ax.set_xlabel("rank")
    ax.set_ylabel("eigenvalue")
    ax.set_title(title)
    if label is not None:
        ax.legend()
    return ax.figure
