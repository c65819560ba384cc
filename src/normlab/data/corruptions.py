"""Corruptions for test-time adaptation experiments.

Images ``(N, C, H, W)`` in [0, 1] use the CIFAR-10-C severity constants of
Hendrycks & Dietterich (ICLR 2019), re-implemented in torch (no OpenCV,
scikit-image or PIL): gaussian noise, contrast, brightness, pixelate, defocus
blur. 1-D signals ``(N, L)`` or ``(N, 1, L)`` get noise, an additive shift, a
gain (scaling) and contrast. Severity is 1..5; randomness takes a generator.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

# CIFAR-10-C constants, severities 1..5.
IMAGE_SEVERITY = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise std
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor around the per-image channel mean
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to HSV value
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # down-sampling factor
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),  # disk radius, alias blur
}
# 1-D signals (MNIST-1D is standardized: std 1): normlab's own scale.
SIGNAL_SEVERITY = {
    "noise": (0.1, 0.2, 0.3, 0.5, 0.8),  # noise std
    "shift": (0.25, 0.5, 1.0, 1.5, 2.0),  # added offset
    "scale": (1.25, 1.5, 2.0, 2.5, 3.0),  # gain
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor around each signal's mean
}


def _constant(table: dict, name: str, severity: int):
    if name not in table:
        raise ValueError(f"unknown corruption {name!r}; expected one of {sorted(table)}")
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    return table[name][int(severity) - 1]


def _check_images(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"expected float images (N, C, H, W) in [0, 1], got {getattr(x, 'shape', type(x))}")


def gaussian_noise(x: Tensor, severity: int = 1, generator: torch.Generator | None = None) -> Tensor:
    c = _constant(IMAGE_SEVERITY, "gaussian_noise", severity)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return (x + c * noise).clamp(0, 1)


def contrast(x: Tensor, severity: int = 1) -> Tensor:
    c = _constant(IMAGE_SEVERITY, "contrast", severity)
    means = x.mean(dim=(2, 3), keepdim=True)
    return ((x - means) * c + means).clamp(0, 1)


def brightness(x: Tensor, severity: int = 1) -> Tensor:
    """Add c to the HSV value with hue and saturation fixed: rgb scales by (v + c) / v."""
    c = _constant(IMAGE_SEVERITY, "brightness", severity)
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp(0, 1)
    return torch.where(v > 0, x * (v_new / v.clamp_min(1e-12)), v_new.expand_as(x)).clamp(0, 1)


def pixelate(x: Tensor, severity: int = 1) -> Tensor:
    """Box down-sampling to ``int(size * c)`` then back (area average down, nearest up)."""
    c = _constant(IMAGE_SEVERITY, "pixelate", severity)
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, int(h * c)), max(1, int(w * c))), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest")


def disk_kernel(radius: float, alias_blur: float, dtype=torch.float32) -> Tensor:
    """CIFAR-C's defocus kernel: a normalized disk blurred by a 3x3 Gaussian, trimmed to its support."""
    r = torch.arange(-8, 9, dtype=torch.float64)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    disk = ((xx**2 + yy**2) <= radius**2).to(torch.float64)
    disk /= disk.sum()
    g = torch.exp(-(torch.arange(-1, 2, dtype=torch.float64) ** 2) / (2 * alias_blur**2))
    g /= g.sum()
    k = disk[None, None]
    k = F.conv2d(F.pad(k, (1, 1, 0, 0), mode="reflect"), g.view(1, 1, 1, 3))
    k = F.conv2d(F.pad(k, (0, 0, 1, 1), mode="reflect"), g.view(1, 1, 3, 1))[0, 0]
    nz = (k.abs() > 1e-12).nonzero()
    lo, hi = nz.min(0).values, nz.max(0).values
    half = int(max((hi - 8).abs().max(), (lo - 8).abs().max()))
    return k[8 - half : 9 + half, 8 - half : 9 + half].to(dtype)


def defocus_blur(x: Tensor, severity: int = 1) -> Tensor:
    radius, alias = _constant(IMAGE_SEVERITY, "defocus_blur", severity)
    k = disk_kernel(radius, alias, x.dtype)
    half = k.shape[-1] // 2
    c = x.shape[1]
    padded = F.pad(x, (half,) * 4, mode="reflect") if half else x
    return F.conv2d(padded, k.expand(c, 1, *k.shape), groups=c).clamp(0, 1)


IMAGE_CORRUPTIONS = {
    "gaussian_noise": gaussian_noise,
    "contrast": contrast,
    "brightness": brightness,
    "pixelate": pixelate,
    "defocus_blur": defocus_blur,
}


def corrupt_images(x: Tensor, name: str, severity: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Apply the named CIFAR-10-C corruption to images in [0, 1]."""
    _check_images(x)
    _constant(IMAGE_SEVERITY, name, severity)
    fn = IMAGE_CORRUPTIONS[name]
    return fn(x, severity, generator) if name == "gaussian_noise" else fn(x, severity)


def corrupt_signals(x: Tensor, name: str, severity: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Apply a 1-D corruption to signals ``(N, L)`` or ``(N, C, L)``."""
    if not isinstance(x, Tensor) or x.dim() not in (2, 3) or not x.is_floating_point():
        raise ValueError(f"expected float signals (N, L) or (N, C, L), got {getattr(x, 'shape', type(x))}")
    c = _constant(SIGNAL_SEVERITY, name, severity)
    if name == "noise":
        return x + c * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    if name == "shift":
        return x + c
    if name == "scale":
        return x * c
    mean = x.mean(dim=-1, keepdim=True)
    return (x - mean) * c + mean


__all__ = [
    "IMAGE_CORRUPTIONS",
    "IMAGE_SEVERITY",
    "SIGNAL_SEVERITY",
    "brightness",
    "contrast",
    "corrupt_images",
    "corrupt_signals",
    "defocus_blur",
    "disk_kernel",
    "gaussian_noise",
    "pixelate",
]
