"""scg.models.data: fixed digits split, exact linear-Gaussian densities, breast cancer, IDX/npz loading."""

import gzip
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from scg.models import data


def test_digits_split_is_fixed_binary_and_disjoint():
    d = data.digits()
    assert d.train.shape == (1000, 64) and d.val.shape == (350, 64) and d.test.shape == (447, 64)
    assert d.train.dtype == torch.float32 and d.dim == 64
    for part in (d.train, d.val, d.test):
        assert set(part.unique().tolist()) <= {0.0, 1.0}
    again = data.digits()
    assert torch.equal(d.train, again.train) and torch.equal(d.test_labels, again.test_labels)
    # The three parts partition the 1797 images: the multiset of (image, label) rows is the full data.
    full = data.digits(seed=1)
    rows = lambda s: sorted(
        map(
            tuple,
            torch.cat(
                [
                    torch.cat([s.train, s.val, s.test]),  # noqa: E731
                    torch.cat([s.train_labels, s.val_labels, s.test_labels]).unsqueeze(1).float(),
                ],
                1,
            ).tolist(),
        )
    )
    assert rows(d) == rows(full)
    assert not torch.equal(d.train, full.train)


def test_digits_intensities_and_threshold_error():
    d = data.digits(binarized=False, dtype=torch.float64)
    assert d.train.dtype == torch.float64 and 0.0 <= float(d.train.min()) and float(d.train.max()) <= 1.0
    assert len(d.train.unique()) == 17
    with pytest.raises(ValueError, match=r"`threshold` must be in \(0, 1\); got 1.5"):
        data.digits(threshold=1.5)


def test_linear_gaussian_exact_density_and_posterior():
    truth, s = data.linear_gaussian(
        data_dim=5,
        latent_dim=3,
        noise_std=0.3,
        correlation=0.8,
        sizes=(20, 5, 5),
        dtype=torch.float64,
    )
    assert s.train.shape == (20, 5) and s.val.shape == (5, 5) and s.test.shape == (5, 5)
    w, b, s2 = truth.weight.numpy(), truth.bias.numpy(), truth.noise_std**2
    ref = multivariate_normal(b, w @ w.T + s2 * np.eye(5)).logpdf(s.test.numpy())
    np.testing.assert_allclose(truth.log_prob(s.test).numpy(), ref, rtol=1e-12)
    # Posterior by conditioning the joint Gaussian of (z, x).
    mean, cov = truth.posterior(s.test)
    gain = w.T @ np.linalg.inv(w @ w.T + s2 * np.eye(5))
    np.testing.assert_allclose(mean.numpy(), (s.test.numpy() - b) @ gain.T, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.eye(3) - gain @ w, rtol=1e-9, atol=1e-12)
    # The mean-field gap is KL(best diagonal Gaussian || posterior), computed directly.
    prec = np.linalg.inv(cov.numpy())
    var = 1 / np.diag(prec)
    kl = 0.5 * (np.trace(prec @ np.diag(var)) - 3 + np.linalg.slogdet(cov.numpy())[1] - np.log(var).sum())
    assert truth.mean_field_gap() == pytest.approx(kl, rel=1e-9) and truth.mean_field_gap() > 0.1


def test_linear_gaussian_orthogonal_columns_have_no_gap():
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    lg = data.LinearGaussian(w, torch.zeros(3, dtype=torch.float64), 0.5)
    assert lg.mean_field_gap() == pytest.approx(0.0, abs=1e-12)
    assert lg.data_dim == 3 and lg.latent_dim == 2


def test_linear_gaussian_errors():
    with pytest.raises(ValueError, match=r"`correlation` must be in \[0, 1\); got 1.0"):
        data.linear_gaussian(correlation=1.0)
    with pytest.raises(ValueError, match="`noise_std`"):
        data.linear_gaussian(noise_std=0.0)
    with pytest.raises(ValueError, match="`latent_dim`"):
        data.linear_gaussian(latent_dim=0)


def test_breast_cancer_standardised_with_bias():
    x, y, xt, yt = data.breast_cancer(dtype=torch.float64)
    assert x.shape == (569, 31) and y.shape == (569,) and xt.shape == (0, 31)
    assert torch.equal(x[:, -1], torch.ones(569, dtype=torch.float64))
    np.testing.assert_allclose(x[:, :-1].mean(0).numpy(), 0.0, atol=1e-12)
    np.testing.assert_allclose(x[:, :-1].std(0, unbiased=False).numpy(), 1.0, rtol=1e-12)
    assert set(y.unique().tolist()) == {0.0, 1.0}
    x2, y2, xt2, yt2 = data.breast_cancer(test_fraction=0.2)
    assert x2.shape[0] + xt2.shape[0] == 569 and xt2.shape[0] == 114
    with pytest.raises(ValueError, match=r"`test_fraction` must be in \[0, 1\); got 1"):
        data.breast_cancer(test_fraction=1)


def _write_idx(path, array, compress=False):
    codes = {np.uint8: 0x08, np.float32: 0x0D}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    body = array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as fh:
        fh.write(header + body)


def _fake_mnist(rng, n):
    return rng.integers(0, 256, size=(n, 4, 3), dtype=np.uint8), rng.integers(0, 10, size=n, dtype=np.uint8)


@pytest.mark.parametrize("compress", [False, True])
def test_load_mnist_from_idx_folder(tmp_path, compress):
    rng = np.random.default_rng(0)
    xtr, ytr = _fake_mnist(rng, 12)
    xte, yte = _fake_mnist(rng, 5)
    sfx = ".gz" if compress else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", xtr, compress)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", ytr, compress)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", xte, compress)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", yte, compress)
    s = data.load_mnist(tmp_path, val_size=4)
    assert s.train.shape == (8, 12) and s.val.shape == (4, 12) and s.test.shape == (5, 12)
    np.testing.assert_allclose(s.train.numpy(), xtr[:8].reshape(8, 12) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(s.val_labels.numpy(), ytr[8:])
    np.testing.assert_array_equal(s.test_labels.numpy(), yte)


def test_load_mnist_from_npz_and_read_idx_float(tmp_path):
    rng = np.random.default_rng(1)
    xtr, ytr = _fake_mnist(rng, 6)
    xte, yte = _fake_mnist(rng, 3)
    np.savez(tmp_path / "mnist.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    s = data.load_mnist(tmp_path / "mnist.npz", val_size=0)
    assert s.train.shape == (6, 12) and s.val.shape == (0, 12) and s.test.shape == (3, 12)
    arr = rng.standard_normal((2, 3)).astype(np.float32)
    _write_idx(tmp_path / "f.idx", arr)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "f.idx"), arr)


def test_mnist_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="`path` must be an IDX file"):
        data.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x00" * 3)
    with pytest.raises(ValueError, match="is truncated"):
        data.read_idx(tmp_path / "short")
    with pytest.raises(ValueError, match="must contain train-images-idx3-ubyte"):
        data.load_mnist(tmp_path)
    with pytest.raises(ValueError, match="`path` must be a folder of IDX files or an existing .npz"):
        data.load_mnist(tmp_path / "nothing.npz")
    np.savez(tmp_path / "part.npz", x_train=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="missing"):
        data.load_mnist(tmp_path / "part.npz")
    np.savez(
        tmp_path / "m.npz",
        x_train=np.zeros((2, 2)),
        y_train=np.zeros(2),
        x_test=np.zeros((1, 2)),
        y_test=np.zeros(1),
    )
    with pytest.raises(ValueError, match=r"`val_size` must be an int in \[0, 2\); got 2"):
        data.load_mnist(tmp_path / "m.npz", val_size=2)


def test_binarize_dynamic():
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([[0.0, 1.0, 0.5]]).expand(2000, 3)
    b = data.binarize(x, generator=g)
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(b[:, :2], x[:, :2])
    # Binomial(2000, 1/2): |mean - 1/2| <= 3.29 * sqrt(1/4/2000) fails with probability 1e-3.
    assert abs(float(b[:, 2].mean()) - 0.5) <= 3.29 * math.sqrt(0.25 / 2000)
    with pytest.raises(ValueError, match=r"`x` must hold intensities in \[0, 1\]"):
        data.binarize(torch.tensor([1.5]))
