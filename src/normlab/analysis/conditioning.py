"""Conditioning: per-layer input and output-gradient covariances, their spectra and condition numbers.

The normalization survey (Huang et al., "Normalization Techniques in Training
DNNs", 2020, Sec. 3) explains why normalizing activations helps through the
conditioning of each layer's curvature block. For a layer ``y = W x`` the
Fisher/Gauss-Newton block of ``W`` is approximated (K-FAC, Martens & Grosse
2015) by the Kronecker product

    F_W  ~  E[x x^T]  (x)  E[g g^T],        g = dloss/dy,

so its condition number is the product of the condition numbers of the
layer's **input second moment** and of its **output-gradient second moment**.
A well-conditioned landscape needs both to be well conditioned: inputs
centered (a non-zero mean is a large outlying eigenvalue of ``E[x x^T]``) and
decorrelated with equal variances (whitening makes ``E[x x^T] = I``).

:func:`layer_covariances` measures both with hooks over any model and data;
:func:`least_squares_hessian_condition` is the exact closed form for linear
least squares, where ``H = X^T X / N`` *is* the input second moment.

Choices (each is a keyword):

- **Uncentered by default** (``center=False``): ``E[x x^T]`` is what enters the
  Hessian/Fisher above, so the effect of centering (BatchNorm removing the
  mean) is visible as a drop in the condition number. ``center=True`` gives
  the covariance proper ``E[(x - mu)(x - mu)^T]``.
- **Conv inputs are unfolded patches** (``C_in * prod(kernel_size)``
  features, one row per output position, padding/stride/dilation as the
  conv applies them): that is the input of the equivalent matrix product
  ``W_flat @ patch`` and the input factor of KFC (Grosse & Martens 2016), so
  the spectrum is that of the conv weight's curvature block. For grouped convs
  the covariance covers all input channels; each group's block is a diagonal
  block of it. Output gradients of convs are per-channel (``C_out``
  features, one row per position and example).
- **Rows**: a Linear layer's input ``(N, *, in)`` gives ``N * prod(*)`` rows;
  any other module chosen via ``layers=`` gives one row per position with
  the channel dimension 1 as features (``(N, C)`` inputs: one row per example).
- **Gradient scale**: each batch's output gradients are multiplied by the
  batch size, so that for a loss that averages over the batch each row is the
  gradient of one example's own loss and batches of different sizes pool
  consistently. Condition numbers do not depend on this scale.
- **Accumulation**: rows are pooled over all batches (so the result is that of
  the concatenated data, each batch weighted by its number of rows), in
  float64, merging per-chunk means and centered sums with Chan's parallel
  update (no raw ``E[x^2] - E[x]^2``).
- **Zero eigenvalues**: eigenvalues ``<= tol = rtol * lambda_max`` count as
  zero, with ``rtol`` defaulting to ``dim * eps`` of the dtype the rows came
  in (data in float32 cannot resolve a condition number beyond about
  ``1 / (dim * eps)``). ``condition = lambda_max / lambda_min+`` where
  ``lambda_min+`` is the smallest eigenvalue above ``tol``: the conditioning
  on the covariance's range (dead ReLUs or fewer rows than features make
  the matrix singular; what gradient descent sees on the rest is still
  informative). ``rank`` says how many eigenvalues are above ``tol``;
  ``rank < dim`` means singular, whose strict condition number is infinite.
  An all-zero matrix has ``condition = nan`` and ``rank = 0``.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from normlab.analysis import layer_covariances, least_squares_hessian_condition
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> data = [(torch.randn(32, 8) + 2.0, torch.randint(0, 3, (32,))) for _ in range(4)]
    >>> res = layer_covariances(model, nn.functional.cross_entropy, data, bn_mode="train")
    >>> sorted(res.layers)
    ['0', '2']
    >>> res.layers["0"].input.dim, res.layers["0"].grad.dim
    (8, 16)
    >>> centered = layer_covariances(model, None, data, bn_mode="train", center=True)
    >>> res.layers["0"].input.condition > centered.layers["0"].input.condition
    True
    >>> X = torch.randn(100, 5, dtype=torch.float64)
    >>> ls = least_squares_hessian_condition(X)
    >>> bool(torch.allclose(ls.matrix, X.T @ X / 100))
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ._common import BNMode, LossFn, as_batches, check_bn_mode, params_of, preserved_state, set_bn_mode
from ._layers import is_linear_or_conv, select_layers

__all__ = [
    "ConditioningResult",
    "LayerConditioning",
    "Spectrum",
    "layer_covariances",
    "least_squares_hessian_condition",
    "plot_spectra",
    "spectrum",
]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CHUNK_ELEMENTS = 1 << 22  # float64 rows converted per chunk: 32 MiB


@dataclass
class Spectrum:
    """A symmetric PSD matrix, its eigenvalues (descending) and condition number on its range."""

    matrix: Tensor  # (dim, dim) float64
    eigenvalues: Tensor  # (dim,) float64, descending; tiny negatives from rounding kept as computed
    condition: float  # lambda_max / smallest eigenvalue > tol; nan if all are <= tol
    rank: int  # eigenvalues > tol
    tol: float  # absolute threshold: rtol * lambda_max
    num_rows: int = 0  # rows (samples x positions) the matrix was estimated from

    @property
    def dim(self) -> int:
        return self.matrix.shape[0]

    @property
    def singular(self) -> bool:
        return self.rank < self.dim


@dataclass
class LayerConditioning:
    name: str
    input: Spectrum
    grad: Spectrum | None  # None without a loss, or when no gradient reached the layer's output


@dataclass
class ConditioningResult:
    layers: dict[str, LayerConditioning]
    center: bool
    bn_mode: str
    num_examples: int
    info: dict = field(default_factory=dict)

    def condition_numbers(self) -> dict[str, tuple[float, float | None]]:
        """``{layer: (input condition, output-gradient condition or None)}``."""
        return {
            n: (lc.input.condition, None if lc.grad is None else lc.grad.condition) for n, lc in self.layers.items()
        }


def spectrum(matrix: Tensor, rtol: float | None = None, eps_dtype: torch.dtype = torch.float64, num_rows: int = 0):
    """Eigenvalues and condition number of a symmetric PSD matrix (float64), zero eigenvalues per ``rtol``.

    ``rtol=None`` means ``dim * finfo(eps_dtype).eps``.
    """
    m = matrix.detach().to("cpu", torch.float64)  # results are plain CPU tensors; eigvalsh of a small matrix
    if m.dim() != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"expected a non-empty square matrix, got shape {tuple(m.shape)}")
    m = 0.5 * (m + m.T)  # exact symmetry for eigvalsh (rounding in the accumulation can break it slightly)
    ev = torch.linalg.eigvalsh(m).flip(0)
    dim = m.shape[0]
    if rtol is None:
        rtol = dim * torch.finfo(eps_dtype).eps
    if rtol < 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}")
    lmax = float(ev[0])
    tol = rtol * max(lmax, 0.0)
    above = ev[ev > tol]
    rank = int(above.numel())
    condition = float(lmax / float(above[-1])) if rank > 0 and lmax > 0 else math.nan
    return Spectrum(m, ev, condition, rank, tol, num_rows)


class _Moments:
    """Running mean and centered sum of outer products, float64, merged by Chan's parallel update."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None
        self.dtype: torch.dtype | None = None

    def add(self, rows: Tensor, scale: float = 1.0) -> None:
        if self.dtype is None:
            self.dtype = rows.dtype
        elif self.mean is not None and rows.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"a layer produced rows of {rows.shape[1]} features after {self.mean.shape[0]}: "
                "the covariance needs a fixed feature size"
            )
        chunk = max(1, _CHUNK_ELEMENTS // max(1, rows.shape[1]))
        for start in range(0, rows.shape[0], chunk):
            r = rows[start : start + chunk].detach().to(torch.float64)
            if scale != 1.0:
                r = r * scale
            k = r.shape[0]
            mu = r.mean(0)
            c = r - mu
            m2 = c.T @ c
            if self.n == 0:
                self.n, self.mean, self.m2 = k, mu, m2
            else:
                n = self.n + k
                delta = mu - self.mean
                self.m2 = self.m2 + m2 + torch.outer(delta, delta) * (self.n * k / n)
                self.mean = self.mean + delta * (k / n)
                self.n = n

    def matrix(self, center: bool) -> Tensor:
        cov = self.m2 / self.n
        # Uncentered second moment = covariance + mean mean^T: a sum of PSD terms, no cancellation.
        return cov if center else cov + torch.outer(self.mean, self.mean)


def _input_rows(module: nn.Module, x: Tensor) -> Tensor:
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, _CONV):
        return _conv_patches(module, x)
    return _channel_rows(x)


def _channel_rows(t: Tensor) -> Tensor:
    if t.dim() == 1:
        return t.reshape(1, -1)
    if t.dim() == 2:
        return t
    return t.movedim(1, -1).reshape(-1, t.shape[1])


def _output_rows(module: nn.Module, g: Tensor) -> Tensor:
    if isinstance(module, nn.Linear):
        return g.reshape(-1, g.shape[-1])
    return _channel_rows(g)


def _conv_patches(conv: nn.Module, x: Tensor) -> Tensor:
    """Rows ``(N * prod(out), C_in * prod(k))`` ordered as ``conv.weight.flatten(1)``: pure memory ops.

    (Unfolding with an identity-kernel convolution would be shorter but can run
    in TF32 on GPUs and round the inputs.)
    """
    k = conv.kernel_size
    nd = len(k)
    if x.dim() == nd + 1:  # unbatched input
        x = x.unsqueeze(0)
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    pad = conv._reversed_padding_repeated_twice
    if any(pad):
        x = torch.nn.functional.pad(x, pad, mode=mode)
    for i in range(nd):
        span = conv.dilation[i] * (k[i] - 1) + 1
        x = x.unfold(2 + i, span, conv.stride[i])[..., :: conv.dilation[i]]
    # x: (N, C, *out, *k) -> (N, *out, C, *k)
    perm = [0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd)]
    x = x.permute(perm)
    return x.reshape(-1, conv.in_channels * math.prod(k))


def layer_covariances(
    model: nn.Module,
    loss_fn: LossFn | None,
    data,
    *,
    layers=None,
    bn_mode: BNMode,
    center: bool = False,
    rtol: float | None = None,
) -> ConditioningResult:
    """Per-layer input and output-gradient second moments over ``data``, with spectra and condition numbers.

    Args:
        model: any ``nn.Module``; left exactly as found (flags, parameters,
            buffers, ``.grad``).
        loss_fn: ``loss_fn(outputs, targets) -> scalar``; ``None`` collects the
            input side only (forward passes under ``no_grad``).
        data: one batch ``(inputs, targets)`` or an iterable of batches.
        layers: ``None`` (every ``nn.Linear`` and ``nn.Conv1d/2d/3d``), a type
            or tuple of types, or a list of submodule names/modules.
        bn_mode: required; ``"train"`` (the training loss: batch-statistics
            norms use batch statistics) or ``"eval"`` (the inference function:
            running statistics); other modules run in eval mode. See
            :func:`normlab.analysis.set_bn_mode`.
        center: ``False`` for ``E[x x^T]`` (the Hessian/Fisher factor),
            ``True`` for the covariance ``E[(x-mu)(x-mu)^T]``.
        rtol: eigenvalues ``<= rtol * lambda_max`` count as zero (default
            ``dim * eps`` of the rows' dtype). See the module docstring.

    Returns:
        :class:`ConditioningResult`; ``result.layers[name].input`` and
        ``.grad`` are :class:`Spectrum` objects (float64).
    """
    check_bn_mode(bn_mode)
    batches = as_batches(data)
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (outputs, targets) -> scalar or None, got {type(loss_fn).__name__}")
    if not isinstance(center, bool):
        raise TypeError(f"center must be a bool, got {type(center).__name__}")
    chosen = select_layers(model, layers, is_linear_or_conv, "nn.Linear / nn.Conv1d/2d/3d layers")
    params = params_of(model) if loss_fn is not None else []
    ins = {name: _Moments() for name, _ in chosen}
    grads = {name: _Moments() for name, _ in chosen}
    batch_size = [1]

    def make_hook(name: str, module: nn.Module):
        def hook(mod, inputs, output):
            x = inputs[0] if isinstance(inputs, tuple) and inputs else inputs
            if not isinstance(x, Tensor):
                raise TypeError(f"layer {name}: expected a tensor input, got {type(x).__name__}")
            with torch.no_grad():
                ins[name].add(_input_rows(module, x))
            if loss_fn is not None and isinstance(output, Tensor) and output.requires_grad:
                n = batch_size[0]

                def grad_hook(g: Tensor) -> None:
                    with torch.no_grad():
                        grads[name].add(_output_rows(module, g), scale=float(n))

                # A tensor hook registered before any in-place op on the output sees the gradient of
                # the layer's own output value (torch >= 2.0), so a following ReLU(inplace=True) is fine.
                output.register_hook(grad_hook)

        return hook

    handles = []
    num_examples = 0
    try:
        with preserved_state(model):
            set_bn_mode(model, bn_mode)
            for name, module in chosen:
                handles.append(module.register_forward_hook(make_hook(name, module)))
            for inputs, targets in batches:
                batch_size[0] = inputs.shape[0] if inputs.dim() > 0 else 1
                num_examples += batch_size[0]
                if loss_fn is None:
                    with torch.no_grad():
                        model(inputs)
                    continue
                with torch.enable_grad():
                    loss = loss_fn(model(inputs), targets)
                    if not isinstance(loss, Tensor) or loss.numel() != 1:
                        raise ValueError("loss_fn must return a scalar tensor (use a mean- or sum-reduced loss)")
                    # autograd.grad (not .backward) so that no parameter's .grad is touched.
                    torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        for h in handles:
            h.remove()

    out: dict[str, LayerConditioning] = {}
    for name, _ in chosen:
        mi = ins[name]
        if mi.n == 0:
            raise ValueError(f"layer {name} was never called by the model's forward on this data")
        inp = spectrum(mi.matrix(center), rtol, mi.dtype, mi.n)
        mg = grads[name]
        g = spectrum(mg.matrix(center), rtol, mg.dtype, mg.n) if mg.n > 0 else None
        out[name] = LayerConditioning(name, inp, g)
    return ConditioningResult(out, center, bn_mode, num_examples)


def least_squares_hessian_condition(X, rtol: float | None = None) -> Spectrum:
    """The exact Hessian of linear least squares ``L(w) = ||X w - y||^2 / (2N)``: ``H = X^T X / N``.

    Its eigenvalues and condition number (gradient descent on this loss
    converges at a rate set by ``kappa = lambda_max / lambda_min``). Computed
    in float64; ``rtol`` as in :func:`spectrum` (default ``d * eps`` of
    ``X``'s dtype). A bias column, if wanted, must be part of ``X``.

    Example::

        >>> import torch
        >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> least_squares_hessian_condition(X).condition
        4.0
    """
    if not isinstance(X, Tensor):
        try:
            X = torch.as_tensor(X)
        except Exception as e:  # noqa: BLE001 - reraised with the expected input
            raise TypeError(f"expected X as a tensor (N, d), got {type(X).__name__}") from e
    if X.dim() != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"expected X of shape (N, d) with N, d >= 1, got shape {tuple(X.shape)}")
    if X.is_complex() or X.dtype == torch.bool:
        raise TypeError(f"expected a real-valued X, got dtype {X.dtype}")
    eps_dtype = X.dtype if X.is_floating_point() else torch.float64
    X64 = X.detach().to(torch.float64)
    H = X64.T @ X64 / X64.shape[0]
    return spectrum(H, rtol, eps_dtype, X.shape[0])


def plot_spectra(result: ConditioningResult, normalize: bool = True, max_layers: int = 12):
    """Eigenvalue spectra per layer: inputs (left) and output gradients (right), log scale.

    ``normalize`` divides each spectrum by its largest eigenvalue, so the
    curves' drops read directly as condition numbers. Returns a
    ``matplotlib.figure.Figure`` (no pyplot state, no ``show``).
    """
    from matplotlib.figure import Figure

    if not isinstance(result, ConditioningResult):
        raise TypeError(f"expected a ConditioningResult, got {type(result).__name__}")
    has_grad = any(lc.grad is not None for lc in result.layers.values())
    fig = Figure(figsize=(10 if has_grad else 5.5, 4), layout="constrained")
    axes = fig.subplots(1, 2 if has_grad else 1, squeeze=False)[0]
    for side, ax in zip(("input", "grad"), axes, strict=False):
        for name, lc in list(result.layers.items())[:max_layers]:
            s = getattr(lc, side)
            if s is None:
                continue
            ev = s.eigenvalues[s.eigenvalues > s.tol]
            if ev.numel() == 0:
                continue
            y = ev / ev[0] if normalize else ev
            ax.semilogy(range(1, ev.numel() + 1), y.numpy(), marker=".", label=f"{name} (kappa={s.condition:.3g})")
        ax.set_xlabel("eigenvalue index")
        ax.set_ylabel("lambda_i / lambda_max" if normalize else "lambda_i")
        ctr = "covariance" if result.center else "second moment"
        ax.set_title(f"layer inputs: {ctr}" if side == "input" else f"output gradients: {ctr}")
        ax.legend(fontsize="small")
    return fig
