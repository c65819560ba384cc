"""normlab.data: file loaders (IDX, CIFAR pickles), built-in data sets, corruptions."""

from __future__ import annotations

import colorsys
import gzip
import importlib
import io
import math
import os
import pickle
import random
import re
import struct

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from normlab.data import (
    IMAGE_SEVERITY,
    SIGNAL_SEVERITY,
    cache_dir,
    cifar_files,
    corrupt_images,
    corrupt_signals,
    digits,
    disk_kernel,
    gaussian_covariance,
    load_idx,
    log_spectrum,
    mnist1d,
    mnist_files,
    synthetic_regression,
    teacher_classification,
)
from normlab.data import corruptions as C

# --------------------------------------------------------------------------- IDX


def idx_bytes(arr: np.ndarray, type_code: int) -> bytes:
    """The IDX encoding of ``arr``: magic 0x0000TTNN, big-endian int32 sizes, big-endian payload."""
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[type_code]
    header = bytes([0, 0, type_code, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape)
    return header + arr.astype(dtype).tobytes()


def write_idx(path, arr: np.ndarray, type_code: int = 0x08, gz: bool = False):
    raw = idx_bytes(arr, type_code)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(5, 4, 3), dtype=np.uint8)


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_uint8_round_trip(tmp_path, images, gz):
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    got = load_idx(write_idx(tmp_path / "img", images, gz=gz))
    assert got.dtype == np.uint8 and got.shape == (5, 4, 3)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(load_idx(write_idx(tmp_path / "lab", labels, gz=gz)), labels)


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_float32_and_int16(tmp_path, gz):
    arr = np.array([[-1.5, 0.0, 3.25e-3], [np.pi, -np.e, 1e30]], dtype=np.float32)
    got = load_idx(write_idx(tmp_path / "f", arr, 0x0D, gz=gz))
    assert got.dtype == np.float32 and got.dtype.isnative
    np.testing.assert_array_equal(got, arr)
    ints = np.array([-32768, -1, 0, 1, 32767], dtype=np.int16)
    got = load_idx(write_idx(tmp_path / "i", ints, 0x0B, gz=gz))
    assert got.dtype == np.int16 and got.dtype.isnative
    np.testing.assert_array_equal(got, ints)


def mnist_dir(tmp, n_train=6, n_test=4, hw=(4, 3)):
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, *hw), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, *hw), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays["train-images-idx3-ubyte"][0, 0, 0] = 255  # the scaling's end points are present
    arrays["train-images-idx3-ubyte"][0, 0, 1] = 0
    arrays["t10k-labels-idx1-ubyte"][0] = 9
    for i, (stem, arr) in enumerate(arrays.items()):
        gz = i % 2 == 1  # mixed: raw and gzipped
        write_idx(tmp / (stem + (".gz" if gz else "")), arr, gz=gz)
    return arrays


def test_mnist_files_shapes_dtypes_scaling(tmp_path):
    arrays = mnist_dir(tmp_path)
    ds = mnist_files(tmp_path, name="fashion")
    assert ds.name == "fashion" and ds.num_classes == 10
    assert ds.x_train.shape == (6, 1, 4, 3) and ds.x_test.shape == (4, 1, 4, 3)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.input_shape == (1, 4, 3)
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float()[:, None] / 255.0
    torch.testing.assert_close(ds.x_train, expected, rtol=0, atol=1e-7)
    assert float(ds.x_train.max()) == 1.0 and float(ds.x_train.min()) == 0.0
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_mnist_files_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        mnist_files(tmp_path / "nowhere")


def test_mnist_files_missing_file_is_named(tmp_path):
    mnist_dir(tmp_path)
    for p in tmp_path.glob("t10k-labels-idx1-ubyte*"):
        p.unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        mnist_files(tmp_path)


def test_mnist_files_count_mismatch(tmp_path):
    mnist_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8), gz=True)  # 6 images, 5 labels
    with pytest.raises(ValueError, match="do not match"):
        mnist_files(tmp_path)


def test_load_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent-idx"):
        load_idx(tmp_path / "absent-idx")


def _expect_idx_error(path, what=""):
    with pytest.raises(ValueError, match=re.escape(path.name)) as info:
        load_idx(path)
    assert "IDX" in str(info.value) and what in str(info.value)


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_bad_magic(tmp_path, images, gz):
    raw = bytearray(idx_bytes(images, 0x08))
    for name, pos, value in [("first-byte", 0, 1), ("type-code", 2, 0x07)]:
        bad = bytearray(raw)
        bad[pos] = value
        p = tmp_path / name
        p.write_bytes(gzip.compress(bytes(bad)) if gz else bytes(bad))
        _expect_idx_error(p, "magic")
    p = tmp_path / "short"
    p.write_bytes(b"\x00\x00")
    _expect_idx_error(p, "magic")


def test_load_idx_truncated(tmp_path, images):
    raw = idx_bytes(images, 0x08)
    (tmp_path / "payload").write_bytes(raw[:-1])
    _expect_idx_error(tmp_path / "payload", "payload")
    (tmp_path / "extra").write_bytes(raw + b"\x00")
    _expect_idx_error(tmp_path / "extra", "payload")
    (tmp_path / "payload.gz").write_bytes(gzip.compress(raw[:-7]))
    _expect_idx_error(tmp_path / "payload.gz", "payload")
    (tmp_path / "header").write_bytes(raw[:9])  # 3 dims announced, 1.25 sizes present
    _expect_idx_error(tmp_path / "header", "header")


def test_load_idx_corrupt_gzip(tmp_path, images):
    gz = gzip.compress(idx_bytes(images, 0x08))
    bad_stream = bytearray(gz)
    bad_stream[10] ^= 0xFF  # first byte of the deflate stream: zlib.error, not OSError
    bad_crc = bytearray(gz)
    bad_crc[-8] ^= 0xFF  # CRC32 trailer: gzip.BadGzipFile
    cases = {"stream.gz": bytes(bad_stream), "crc.gz": bytes(bad_crc), "cut.gz": gz[:-5], "header.gz": gz[:6]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        _expect_idx_error(tmp_path / name, "gzip")


# ------------------------------------------------------------------------- CIFAR


class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for the real CIFAR files (protocol 2).

    Python 2 strings become BINSTRING (read back as bytes with ``encoding='bytes'``)
    and NumPy's reconstructor is named ``numpy.core.multiarray``.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_str8(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_str8
    dispatch[bytes] = save_str8

    def save_global(self, obj, name=None):
        module, name = obj.__module__, name or obj.__qualname__
        if module.startswith("numpy._core"):
            module = "numpy.core.multiarray"
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)

    dispatch[type] = save_global


def write_pickle(path, obj, style="py3"):
    if style == "py3":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        buf = io.BytesIO()
        Py2Pickler(buf, protocol=2).dump(obj)
        path.write_bytes(buf.getvalue())
    return path


def cifar_batch(n, seed, label_key=b"labels", num_classes=10):
    rng = np.random.default_rng(seed)
    d = {
        b"batch_label": b"batch %d" % seed,
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: rng.integers(0, num_classes, n).tolist(),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }
    if label_key == b"fine_labels":
        d[b"coarse_labels"] = [99] * n  # must not be used
    return d


def cifar10_dir(tmp, style="py3"):
    batches = [cifar_batch(2, i) for i in range(1, 6)]
    for i, b in enumerate(batches, start=1):
        write_pickle(tmp / f"data_batch_{i}", b, style)
    test = cifar_batch(3, 6)
    write_pickle(tmp / "test_batch", test, style)
    return batches, test


@pytest.mark.parametrize("style", ["py3", "py2"])
def test_cifar10(tmp_path, style):
    batches, test = cifar10_dir(tmp_path, style)
    ds = cifar_files(tmp_path)
    assert ds.name == "cifar10" and ds.num_classes == 10
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    train = np.concatenate([b[b"data"] for b in batches])
    expected = torch.from_numpy(train.astype(np.float32) / 255.0).reshape(10, 3, 32, 32)
    assert torch.equal(ds.x_train, expected)
    assert ds.y_train.tolist() == sum((b[b"labels"] for b in batches), [])
    assert ds.y_test.tolist() == test[b"labels"]
    assert 0.0 <= float(ds.x_train.min()) and float(ds.x_train.max()) <= 1.0


def test_cifar_channel_order(tmp_path):
    """A row is R plane (1024 values), then G, then B, each row-major over 32x32."""
    row = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.full(1024, 30)]).astype(np.uint8)
    row[5 * 32 + 7] = 200  # red, row 5, column 7
    row[1024 + 31] = 201  # green, row 0, column 31
    data = np.stack([row, row[::-1]])
    for name in ("train", "test"):
        write_pickle(tmp_path / name, {b"data": data, b"fine_labels": [0, 1]})
    ds = cifar_files(tmp_path)
    x = ds.x_train[0] * 255.0
    assert ds.name == "cifar100" and ds.num_classes == 100
    assert x[0, 5, 7].round() == 200 and x[1, 0, 31].round() == 201
    x[0, 5, 7], x[1, 0, 31] = 10, 20
    torch.testing.assert_close(x, torch.tensor([10.0, 20.0, 30.0]).view(3, 1, 1).expand(3, 32, 32))


@pytest.mark.parametrize("style", ["py3", "py2"])
def test_cifar100_fine_labels(tmp_path, style):
    train, test = cifar_batch(4, 1, b"fine_labels", 100), cifar_batch(2, 2, b"fine_labels", 100)
    write_pickle(tmp_path / "train", train, style)
    write_pickle(tmp_path / "test", test, style)
    ds = cifar_files(tmp_path)
    assert ds.x_train.shape == (4, 3, 32, 32) and ds.x_test.shape == (2, 3, 32, 32)
    assert ds.y_train.tolist() == train[b"fine_labels"] and ds.y_test.tolist() == test[b"fine_labels"]


def test_cifar_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        cifar_files(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        cifar_files(tmp_path)  # an empty folder
    cifar10_dir(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        cifar_files(tmp_path)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize(
    "payload",
    ["no-data", "wide", "short-labels", "no-labels", "not-a-dict", "garbage", "empty", "os.system"],
)
def test_cifar_malformed(tmp_path, payload):
    good = cifar_batch(2, 0)
    marker = tmp_path / "executed"
    bad = {
        "no-data": {b"labels": [0, 1]},
        "wide": {**good, b"data": np.zeros((2, 3071), np.uint8)},
        "short-labels": {**good, b"labels": [0]},
        "no-labels": {b"data": good[b"data"]},
        "not-a-dict": [good[b"data"]],
        "os.system": {b"data": _Exploit(marker), b"labels": [0, 1]},
    }
    write_pickle(tmp_path / "train", cifar_batch(2, 1, b"fine_labels", 100), style="py2")
    target = tmp_path / "test"
    if payload == "garbage":
        target.write_bytes(b"this is not a pickle at all")
    elif payload == "empty":
        target.write_bytes(b"")
    else:
        write_pickle(target, bad[payload])
    with pytest.raises(ValueError, match=re.escape(str(target))) as info:
        cifar_files(tmp_path)
    assert "CIFAR" in str(info.value)
    if payload == "os.system":
        assert "refusing" in str(info.value)
    assert not marker.exists()


# ------------------------------------------------------------------ built-in data


def test_digits():
    ds = digits()
    assert ds.name == "digits" and ds.num_classes == 10 and ds.info == {"seed": 0}
    assert ds.x_train.shape == (1348, 64) and ds.x_test.shape == (449, 64)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    x = torch.cat([ds.x_train, ds.x_test])
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert set(torch.cat([ds.y_train, ds.y_test]).tolist()) == set(range(10))
    # The split is a permutation of scikit-learn's bundle.
    bunch = load_digits()
    ours = sorted(map(tuple, (x * 16).round().int().tolist()))
    assert ours == sorted(map(tuple, bunch.data.astype(int).tolist()))
    assert "digits" in repr(ds)


def test_digits_split_is_seeded():
    a, b, c = digits(seed=3), digits(seed=3), digits(seed=4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert digits(test_fraction=0.5).x_test.shape[0] == round(1797 * 0.5)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="test_fraction"):
            digits(test_fraction=bad)


def test_digits_image():
    flat, img = digits(), digits(image=True)
    assert img.x_train.shape == (1348, 1, 8, 8) and img.input_shape == (1, 8, 8)
    assert torch.equal(img.x_train.reshape(-1, 64), flat.x_train)
    assert torch.equal(img.y_train, flat.y_train)


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NORMLAB_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("NORMLAB_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "normlab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == type(tmp_path).home() / ".cache" / "normlab"


@pytest.fixture(scope="module")
def mnist1d_generated(tmp_path_factory):
    """Generates MNIST-1D once (about 4 s) into a temporary cache."""
    root = tmp_path_factory.mktemp("cache")
    np.random.seed(1234)
    random.seed(1234)
    np_before, py_before = np.random.get_state(), random.getstate()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NORMLAB_CACHE", str(root))
        ds = mnist1d()
    return {
        "root": root,
        "ds": ds,
        "np_states": (np_before, np.random.get_state()),
        "py_states": (py_before, random.getstate()),
    }


def test_mnist1d_shapes(mnist1d_generated):
    ds = mnist1d_generated["ds"]
    assert ds.name == "mnist1d" and ds.num_classes == 10
    assert ds.x_train.shape == (4000, 40) and ds.x_test.shape == (1000, 40)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert set(ds.y_train.tolist()) == set(range(10)) and set(ds.y_test.tolist()) <= set(range(10))
    assert len(ds.info["sha256_x_train"]) == 12


def test_mnist1d_leaves_global_rngs_alone(mnist1d_generated):
    (before, after) = mnist1d_generated["np_states"]
    assert before[0] == after[0] and before[2:] == after[2:]
    np.testing.assert_array_equal(before[1], after[1])
    assert mnist1d_generated["py_states"][0] == mnist1d_generated["py_states"][1]


def test_mnist1d_cache_is_reused(mnist1d_generated, monkeypatch):
    root = mnist1d_generated["root"]
    monkeypatch.setenv("NORMLAB_CACHE", str(root))
    path = root / "mnist1d.npz"
    assert path.exists() and sorted(p.name for p in root.iterdir()) == ["mnist1d.npz"]  # no temp file left
    mtime = path.stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("regenerated instead of reading the cache")

    monkeypatch.setattr(importlib.import_module("mnist1d.data"), "make_dataset", boom)
    again = mnist1d(channel_dim=True)
    assert path.stat().st_mtime_ns == mtime
    ds = mnist1d_generated["ds"]
    assert again.x_train.shape == (4000, 1, 40) and again.x_test.shape == (1000, 1, 40)
    assert torch.equal(again.x_train[:, 0], ds.x_train) and torch.equal(again.y_test, ds.y_test)
    assert again.info == ds.info


def test_gaussian_covariance():
    spectrum = torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    cov = gaussian_covariance(4, spectrum, seed=1)
    torch.testing.assert_close(cov, cov.T)
    torch.testing.assert_close(torch.linalg.eigvalsh(cov), spectrum.flip(0))
    assert torch.equal(cov, gaussian_covariance(4, spectrum, seed=1))
    assert not torch.allclose(cov, gaussian_covariance(4, spectrum, seed=2))
    with pytest.raises(ValueError, match="shape"):
        gaussian_covariance(3, spectrum)
    with pytest.raises(ValueError, match="positive"):
        gaussian_covariance(4, torch.tensor([1.0, 0.0, 1.0, 1.0]))


def test_log_spectrum():
    s = log_spectrum(5, 1e4)
    torch.testing.assert_close(s, torch.tensor([1.0, 0.1, 1e-2, 1e-3, 1e-4], dtype=torch.float64))
    assert torch.equal(log_spectrum(3, 1.0), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="condition_number"):
        log_spectrum(3, 0.5)


def test_synthetic_regression_conditioning():
    ds = synthetic_regression(n=200, dim=10, condition_number=100.0, seed=0)
    assert ds.x_train.dtype == torch.float64 and ds.num_classes is None
    assert ds.x_train.shape == (160, 10) and ds.y_test.shape == (40,)
    eig = torch.linalg.eigvalsh(ds.info["covariance"])
    assert math.isclose(float(eig[-1] / eig[0]), 100.0, rel_tol=1e-10)
    torch.testing.assert_close(eig, log_spectrum(10, 100.0).flip(0), rtol=1e-10, atol=1e-12)
    # noise=0: y = x w* exactly
    torch.testing.assert_close(ds.y_train, ds.x_train @ ds.info["w_star"])


def test_synthetic_regression_sample_covariance_converges():
    def error(n):
        ds = synthetic_regression(n=n, dim=10, condition_number=100.0, seed=0)
        x = torch.cat([ds.x_train, ds.x_test])
        cov = ds.info["covariance"]
        return float(torch.linalg.matrix_norm(x.T @ x / n - cov) / torch.linalg.matrix_norm(cov))

    small, large = error(500), error(40_000)
    assert large < 0.05 and large < small / 3


def test_synthetic_regression_mean_and_noise():
    ds = synthetic_regression(n=20_000, dim=4, condition_number=10.0, mean=3.0, noise=0.5, seed=1)
    x = torch.cat([ds.x_train, ds.x_test])
    torch.testing.assert_close(x.mean(0), torch.full((4,), 3.0, dtype=torch.float64), atol=0.03, rtol=0)
    residual = ds.y_train - ds.x_train @ ds.info["w_star"]
    assert abs(float(residual.std()) - 0.5) < 0.02


def test_teacher_classification():
    ds = teacher_classification(n=500, dim=8, num_classes=5, seed=0)
    assert ds.num_classes == 5 and ds.x_train.shape == (400, 8) and ds.y_test.shape == (100,)
    y = torch.cat([ds.y_train, ds.y_test])
    assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) < 5
    assert len(set(y.tolist())) > 1
    again = teacher_classification(n=500, dim=8, num_classes=5, seed=0)
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_train, ds.y_train)


# ------------------------------------------------------------------- corruptions


def _images(n=2, c=3, size=32, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(IMAGE_SEVERITY))
def test_image_corruptions_keep_shape_and_range(name):
    x = _images()
    for severity in range(1, 6):
        out = corrupt_images(x, name, severity, generator=torch.Generator().manual_seed(0))
        assert out.shape == x.shape and out.dtype == x.dtype
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert not torch.equal(out, x)
    small = corrupt_images(_images(size=8), name, 5)  # digits-sized images work too
    assert small.shape == (2, 3, 8, 8)


@pytest.mark.parametrize("severity", range(1, 6))
def test_gaussian_noise_std(severity):
    c = IMAGE_SEVERITY["gaussian_noise"][severity - 1]
    x = torch.full((4, 3, 32, 32), 0.5)
    out = corrupt_images(x, "gaussian_noise", severity, generator=torch.Generator().manual_seed(severity))
    noise = out - 0.5
    assert float(noise.abs().max()) < 0.5  # nothing clipped: the std is the constant's
    assert abs(float(noise.std()) / c - 1) < 0.03
    assert abs(float(noise.mean())) < 0.01 * c * 10
    same = corrupt_images(x, "gaussian_noise", severity, generator=torch.Generator().manual_seed(severity))
    assert torch.equal(out, same)


def test_contrast_hand_example():
    x = torch.tensor([[[0.0, 0.2], [0.4, 1.0]], [[0.5, 0.5], [0.5, 0.5]]]).unsqueeze(0)  # channel means 0.4, 0.5
    out = C.contrast(x, 1)  # c = 0.75
    expected = torch.tensor([[[0.1, 0.25], [0.4, 0.85]], [[0.5, 0.5], [0.5, 0.5]]]).unsqueeze(0)
    torch.testing.assert_close(out, expected)
    c = IMAGE_SEVERITY["contrast"][4]
    torch.testing.assert_close(C.contrast(x, 5)[0, 0], (x[0, 0] - 0.4) * c + 0.4)


def test_brightness_grayscale():
    gray = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    gray[0, 0, 0, 0] = 0.0  # black: hue undefined, becomes gray c
    gray[0, 0, 0, 1] = 0.97  # saturates
    x = gray.expand(2, 3, 6, 6).contiguous()
    for severity in range(1, 6):
        c = IMAGE_SEVERITY["brightness"][severity - 1]
        torch.testing.assert_close(C.brightness(x, severity), (x + c).clamp(0, 1))


def test_brightness_keeps_hue_and_saturation():
    rng = np.random.default_rng(0)
    pixels = [*rng.random((20, 3)).tolist(), [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.9, 0.95, 0.2], [0.3, 0.0, 0.6]]
    x = torch.tensor(pixels, dtype=torch.float64).T.reshape(1, 3, 1, -1)
    for severity in range(1, 6):
        c = IMAGE_SEVERITY["brightness"][severity - 1]
        out = C.brightness(x, severity).reshape(3, -1).T
        for rgb, got in zip(pixels, out.tolist(), strict=True):
            h, s, v = colorsys.rgb_to_hsv(*rgb)
            expected = colorsys.hsv_to_rgb(h, s, min(v + c, 1.0))
            np.testing.assert_allclose(got, expected, atol=1e-12)


def test_pixelate():
    x = torch.full((2, 3, 32, 32), 0.37)
    for severity in range(1, 6):
        torch.testing.assert_close(C.pixelate(x, severity), x)
    # severity 5 (0.65): 32 -> 20 -> 32, so at most 20 distinct columns remain
    out = C.pixelate(_images(1, 1), 5)
    assert len(torch.unique(out[0, 0, 0])) <= 20


def test_disk_kernel():
    for radius, alias in IMAGE_SEVERITY["defocus_blur"]:
        k = disk_kernel(radius, alias, dtype=torch.float64)
        assert k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
        assert math.isclose(float(k.sum()), 1.0, abs_tol=1e-12)
        torch.testing.assert_close(k, k.T)
        torch.testing.assert_close(k, k.flip(0))


def test_disk_kernel_hand_example():
    """radius 0.3: the disk is the centre pixel alone, so the kernel is the separable 3x3 Gaussian (sigma 0.4)."""
    e = math.exp(-1.0 / (2 * 0.4**2))
    g = torch.tensor([e, 1.0, e], dtype=torch.float64) / (1 + 2 * e)
    k = disk_kernel(0.3, 0.4)
    assert k.shape == (3, 3) and k.dtype == torch.float32
    torch.testing.assert_close(k, torch.outer(g, g).float(), rtol=0, atol=1e-7)
    # radius 1 (severity 4): the 5 pixels of the disk, hardly blurred (sigma 0.2: exp(-12.5) leaks one pixel out)
    k = disk_kernel(1.0, 0.2, dtype=torch.float64)
    plus = torch.tensor([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float64) / 5
    assert k.shape == (5, 5)
    torch.testing.assert_close(k[1:4, 1:4], plus, rtol=0, atol=2e-5)
    assert 0 < float(k[0, 2]) < 1e-5 and float(k[0, 0]) == 0.0


def test_defocus_blur():
    x = torch.full((1, 3, 16, 16), 0.6)
    for severity in range(1, 6):
        torch.testing.assert_close(C.defocus_blur(x, severity), x)
    # An impulse spreads into the kernel itself.
    impulse = torch.zeros(1, 1, 16, 16)
    impulse[0, 0, 8, 8] = 1.0
    k = disk_kernel(*IMAGE_SEVERITY["defocus_blur"][2])
    h = k.shape[0] // 2
    out = C.defocus_blur(impulse, 3)
    torch.testing.assert_close(out[0, 0, 8 - h : 9 + h, 8 - h : 9 + h], k)
    assert math.isclose(float(out.sum()), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("shape", [(4, 50), (4, 1, 50)])
def test_signal_corruptions(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    for severity in range(1, 6):
        s = {k: v[severity - 1] for k, v in SIGNAL_SEVERITY.items()}
        torch.testing.assert_close(corrupt_signals(x, "shift", severity), x + s["shift"])
        torch.testing.assert_close(corrupt_signals(x, "scale", severity), x * s["scale"])
        mean = x.mean(-1, keepdim=True)
        out = corrupt_signals(x, "contrast", severity)
        torch.testing.assert_close(out, (x - mean) * s["contrast"] + mean)
        torch.testing.assert_close(out.mean(-1), x.mean(-1))
        noisy = corrupt_signals(x, "noise", severity, generator=torch.Generator().manual_seed(1))
        assert noisy.shape == x.shape
    big = torch.zeros(100, 1000)
    noise = corrupt_signals(big, "noise", 4, generator=torch.Generator().manual_seed(0))
    assert abs(float(noise.std()) / SIGNAL_SEVERITY["noise"][3] - 1) < 0.01


def test_corruption_errors():
    x = _images()
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt_images(x, "fog")
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt_signals(torch.zeros(2, 5), "gaussian_noise")
    for severity in (0, 6, -1, 2.5, 2.0, True, "3", None):
        with pytest.raises(ValueError, match="severity"):
            corrupt_images(x, "contrast", severity)
        with pytest.raises(ValueError, match="severity"):
            corrupt_signals(torch.zeros(2, 5), "shift", severity)
    assert torch.equal(corrupt_images(x, "contrast", np.int64(2)), corrupt_images(x, "contrast", 2))
    with pytest.raises(ValueError, match="images"):
        corrupt_images(x[0], "contrast")
    with pytest.raises(ValueError, match="images"):
        corrupt_images((x * 255).to(torch.uint8), "contrast")
    with pytest.raises(ValueError, match="signals"):
        corrupt_signals(torch.zeros(5), "shift")
