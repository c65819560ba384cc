"""Loaders for data files the user points to: MNIST-style IDX and CIFAR python pickles.

Nothing is downloaded: pass the directory that holds the files. A missing
file raises ``FileNotFoundError`` and a malformed one ``ValueError``, both
naming the file and the format expected.
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from pathlib import Path

import numpy as np
import torch

from .datasets import Dataset

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_FORMAT = "IDX (magic 0x0000TTNN: type TT, NN dims; big-endian int32 sizes; raw or gzipped)"


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (expected {_IDX_FORMAT})")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: corrupt gzip data ({err}); expected {_IDX_FORMAT}") from err
    return raw


def load_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (the MNIST / Fashion-MNIST format), raw or gzipped."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4].hex()}); expected {_IDX_FORMAT}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header; expected {_IDX_FORMAT}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX payload is {len(raw) - header} bytes, the header's shape {shape} needs {expected}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).exists():
            return directory / name
    raise FileNotFoundError(f"{directory}: neither {stem} nor {stem}.gz found (expected MNIST-style {_IDX_FORMAT})")


def mnist_files(directory: str | Path, name: str = "mnist") -> Dataset:
    """MNIST or Fashion-MNIST from ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (optionally ``.gz``) in ``directory``.

    Images scaled to [0, 1] as ``(N, 1, H, W)`` float32; labels int64.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory (expected the folder holding the MNIST IDX files)")
    arrays = []
    for split in ("train", "t10k"):
        images = load_idx(_find(directory, f"{split}-images-idx3-ubyte"))
        labels = load_idx(_find(directory, f"{split}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{directory}: {split} images {images.shape} and labels {labels.shape} do not match "
                "(expected (N, H, W) and (N,))"
            )
        arrays += [
            torch.from_numpy((images / 255.0).astype(np.float32)[:, None]),
            torch.from_numpy(labels.astype(np.int64)),
        ]
    num_classes = int(max(arrays[1].max(), arrays[3].max())) + 1
    return Dataset(name, *arrays, num_classes=num_classes, info={"directory": str(directory)})


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What Python 3 pickles bytes as below protocol 3 (``_codecs.encode(s, 'latin1')``), and nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickle only what CIFAR's files hold (dicts, bytes, lists, NumPy arrays): no code runs."""

    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):  # bytes in a Python 3 pickle of protocol 2
            return _latin1_encode
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


_CIFAR_FORMAT = "a CIFAR python pickle: a dict with b'data' (N, 3072) uint8 and b'labels' or b'fine_labels'"


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (expected {_CIFAR_FORMAT})")
    try:
        with path.open("rb") as f:
            d = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as err:  # any unpickling failure is a malformed file
        raise ValueError(f"{path}: cannot read ({err}); expected {_CIFAR_FORMAT}") from err
    if not isinstance(d, dict) or b"data" not in d:
        raise ValueError(f"{path}: missing b'data'; expected {_CIFAR_FORMAT}")
    labels = d.get(b"labels", d.get(b"fine_labels"))
    data = np.asarray(d[b"data"])
    if labels is None or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path}: data {data.shape} / labels do not match; expected {_CIFAR_FORMAT}")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def cifar_files(directory: str | Path) -> Dataset:
    """CIFAR-10 (``data_batch_1..5``, ``test_batch``) or CIFAR-100 (``train``, ``test``) python pickles.

    ``directory`` is the extracted ``cifar-10-batches-py`` or ``cifar-100-python``
    folder. Images ``(N, 3, 32, 32)`` float32 in [0, 1]; CIFAR-100 uses fine labels.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory (expected cifar-10-batches-py or cifar-100-python)")
    if (directory / "data_batch_1").exists():
        train_files = [directory / f"data_batch_{i}" for i in range(1, 6)]
        test_files, name, classes = [directory / "test_batch"], "cifar10", 10
    elif (directory / "train").exists():
        train_files, test_files, name, classes = [directory / "train"], [directory / "test"], "cifar100", 100
    else:
        raise FileNotFoundError(
            f"{directory}: found neither data_batch_1 (CIFAR-10) nor train (CIFAR-100); expected {_CIFAR_FORMAT} files"
        )
    out = []
    for files in (train_files, test_files):
        parts = [_load_cifar_batch(p) for p in files]
        x = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
        out += [torch.from_numpy(x), torch.from_numpy(np.concatenate([p[1] for p in parts]))]
    return Dataset(name, *out, num_classes=classes, info={"directory": str(directory)})
