"""Data for normlab's experiments: bundled, generated, or read from files you point to.

Nothing is ever downloaded.
"""

from .corruptions import IMAGE_SEVERITY, SIGNAL_SEVERITY, corrupt_images, corrupt_signals, disk_kernel
from .datasets import (
    Dataset,
    cache_dir,
    digits,
    gaussian_covariance,
    log_spectrum,
    mnist1d,
    synthetic_regression,
    teacher_classification,
)
from .files import cifar_files, load_idx, mnist_files

__all__ = [
    "IMAGE_SEVERITY",
    "SIGNAL_SEVERITY",
    "Dataset",
    "cache_dir",
    "cifar_files",
    "corrupt_images",
    "corrupt_signals",
    "digits",
    "disk_kernel",
    "gaussian_covariance",
    "load_idx",
    "log_spectrum",
    "mnist1d",
    "mnist_files",
    "synthetic_regression",
    "teacher_classification",
]
