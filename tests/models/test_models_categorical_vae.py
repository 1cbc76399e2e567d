"""CategoricalVAE: shapes, exact ELBO and log p(x) by enumeration, exact encoder-gradient expectation, budget, CLI."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import scg
from scg.models import experiments
from scg.models.categorical_vae import (
    CATEGORICAL_ESTIMATORS,
    CategoricalVAE,
    categorical_estimator,
    samples_for_budget,
)
from scg.models.experiments_categorical import SMOKE, CategoricalConfig, gradient_variance

D, K, X = 2, 3, 5


def _tiny(estimator: scg.Estimator | None = None, num_samples: int = 2) -> tuple[CategoricalVAE, Tensor]:
    torch.manual_seed(0)
    m = CategoricalVAE(X, latents=D, classes=K, hidden=(4,), estimator=estimator, num_samples=num_samples)
    m = m.double()
    x = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 1, 0, 1], [1, 1, 1, 0, 0]], dtype=torch.float64)
    return m, x


def _states() -> Tensor:
    """All K^D one-hot latent configurations, ``[K^D, D, K]`` (independent of the code under test)."""
    rows = [torch.eye(K, dtype=torch.float64)[list(c)] for c in itertools.product(range(K), repeat=D)]
    return torch.stack(rows)


def _oracle(m: CategoricalVAE, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """By hand from the networks: log q(z|x) ``[Z, B]``, log p(x|z) ``[Z, B]``, exact ELBO and log p(x) ``[B]``."""
    z = _states()  # [Z, D, K]
    log_pi = torch.log_softmax(m.encoder.net(x).reshape(-1, D, K), -1)  # [B, D, K]
    log_q = torch.einsum("zdk,bdk->zb", z, log_pi)
    logits = m.decoder.net(z.reshape(-1, D * K))  # [Z, X]
    log_lik = (x.unsqueeze(0) * logits.unsqueeze(1) - F.softplus(logits).unsqueeze(1)).sum(-1)  # [Z, B]
    log_joint = log_lik - D * math.log(K)
    elbo = (log_q.exp() * (log_joint - log_q)).sum(0)
    log_px = torch.logsumexp(log_joint, 0)
    return log_q, log_lik, elbo, log_px


def test_shapes_and_gradients_reach_every_parameter_for_every_estimator() -> None:
    x = torch.bernoulli(
        torch.full((4, X), 0.5, dtype=torch.float64), generator=torch.Generator().manual_seed(1)
    )
    for name in CATEGORICAL_ESTIMATORS:
        est = categorical_estimator(name, x_dim=X)
        m, _ = _tiny(est)
        q = m.posterior(x)
        assert q.batch_shape == (4,) and q.event_shape == (D, K)
        m.num_samples = samples_for_budget(est, q, 1 + D * K)
        out = m.objective(x)
        assert out.shape == (4,)
        m.loss(x).backward()
        for p_name, p in itertools.chain(m.encoder.named_parameters(), m.decoder.named_parameters()):
            assert p.grad is not None and torch.isfinite(p.grad).all(), (name, p_name)
        assert m.bound(x, num_samples=3).shape == (4,)
        assert m.log_weights(x, 7).shape == (7, 4)


def test_elbo_and_kl_equal_enumeration() -> None:
    m, x = _tiny(scg.Enumerate())
    log_q, _, elbo, _ = _oracle(m, x)
    # Enumerate's surrogate is the exact reconstruction term; the model adds its analytic KL
    torch.testing.assert_close(m.objective(x), -elbo, rtol=0, atol=1e-12)
    kl = (log_q.exp() * (log_q + D * math.log(K))).sum(0)
    torch.testing.assert_close(m.kl(m.posterior(x)), kl, rtol=0, atol=1e-12)


def test_bound_and_log_weights_replay_the_oracle() -> None:
    m, x = _tiny()
    log_q, log_lik, elbo, log_px = _oracle(m, x)
    torch.manual_seed(3)
    w = m.log_weights(x, 50)
    torch.manual_seed(3)
    z = m.posterior(x).sample((50,))  # [50, B, D, K]
    index = (z.argmax(-1) * torch.tensor([K, 1])).sum(-1)  # state number in itertools.product order
    log_joint = (log_lik - D * math.log(K)).gather(0, index)
    torch.testing.assert_close(w, log_joint - log_q.gather(0, index), rtol=0, atol=1e-12)
    torch.manual_seed(3)
    b = m.bound(x, num_samples=50)
    kl = (log_q.exp() * (log_q + D * math.log(K))).sum(0)
    torch.testing.assert_close(b, log_lik.gather(0, index).mean(0) - kl, rtol=0, atol=1e-12)
    assert (elbo < log_px).all()


def test_importance_sampled_log_px_converges_to_enumeration() -> None:
    m, x = _tiny()
    log_q, log_lik, _, log_px = _oracle(m, x)
    from scg.models.evaluate import log_likelihood

    n = 20000
    torch.manual_seed(0)
    est = log_likelihood(m, x, num_samples=n, chunk_size=5000)
    # delta method: sd(log p̂) ≈ sqrt(relvar / n), bias ≈ −relvar / (2n); relvar = E_q[(w/p)²] − 1, exact here.
    # Threshold 5 sd + |bias| per point: two-sided failure rate < 3 · 6e-7 (3 points, Bonferroni).
    log_w = log_lik - D * math.log(K) - log_q
    relvar = (log_q.exp() * (2 * (log_w - log_px)).exp()).sum(0) - 1
    tol = 5 * (relvar / n).sqrt() + relvar / (2 * n)
    assert ((est - log_px).abs() < tol).all(), (est, log_px, tol)


def _exact_gradient_check(est: scg.Estimator, S: int) -> None:
    m, x = _tiny(est, num_samples=S)
    m.eval()  # no running statistics
    enc = list(m.encoder.parameters())
    _, _, elbo, _ = _oracle(m, x)
    want = torch.autograd.grad(-elbo.sum(), enc)
    z = _states()
    with torch.no_grad():
        log_q = _oracle(m, x)[0]  # [Z, B]
    got = [torch.zeros_like(p) for p in enc]
    for combo in itertools.product(range(z.shape[0]), repeat=S):
        draws = {"z": z[list(combo)].unsqueeze(1).expand(S, x.shape[0], D, K).clone()}
        weight = log_q[list(combo)].sum(0).exp()  # [B]: probability of this S-tuple for each data point
        out = m.objective(x, draws=draws)
        for g, gi in zip(got, torch.autograd.grad((weight * out).sum(), enc), strict=True):
            g += gi
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


def test_encoder_gradient_is_unbiased_by_enumeration_indecater() -> None:
    _exact_gradient_check(scg.IndeCateR(), 1)


def test_encoder_gradient_is_unbiased_by_enumeration_rloo() -> None:
    _exact_gradient_check(scg.ScoreFunction(baseline=scg.baselines.LeaveOneOut()), 2)


def test_budget_gives_the_largest_S_within_it() -> None:
    q = CategoricalVAE(64, latents=8, classes=4, hidden=(8,)).posterior(torch.zeros(2, 64))
    E = 33
    # costs per sample from the estimators' definitions: 1 + D·K (IndeCateR, MV), 1 + K(K−1)/2 (ARSM)
    expected = {
        "rloo": 33,
        "gumbel-rao": 33,
        "disarm": 16,
        "arsm": 33 // (1 + 4 * 3 // 2),
        "relax": 11,
        "indecater": 1,
        "measure-valued": 1,
    }
    for name, S in expected.items():
        est = categorical_estimator(name, x_dim=64)
        assert samples_for_budget(est, q, E) == S, name
        assert est.evaluations(q, S) <= E < est.evaluations(q, S + 1)


def test_gradient_variance_is_zero_for_enumeration_and_positive_for_score_function() -> None:
    m, x = _tiny(scg.Enumerate(), num_samples=1)
    m.float()
    var, _ = gradient_variance(m, x.float(), 5)
    assert var < 1e-10
    m.estimator = scg.ScoreFunction()
    var, se = gradient_variance(m, x.float(), 20)
    assert var > 0 and se > 0


@pytest.mark.slow
def test_smoke_experiment_runs_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["categorical", "--smoke", "--seeds", "1", "--quiet", "--out", str(tmp_path)]
    experiments.main(argv)
    first = capsys.readouterr().out
    rows = [line for line in first.splitlines() if line.startswith("| ") and "estimator" not in line]
    assert [r.split(" | ")[0][2:] for r in rows] == list(CATEGORICAL_ESTIMATORS)
    experiments.main(argv)  # every cell is read back: the same table
    assert capsys.readouterr().out == first


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"`estimator` must be one of .*got 'nope'"):
        categorical_estimator("nope", x_dim=4)
    with pytest.raises(ValueError, match="`temperature` must be"):
        categorical_estimator("gumbel-softmax", x_dim=4, temperature=-1.0)
    with pytest.raises(TypeError, match="`estimator` must be an scg Estimator; got str"):
        CategoricalVAE(4, estimator="rloo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`num_samples`"):
        CategoricalVAE(4, num_samples=0)
    with pytest.raises(ValueError, match=r"`classes` must be an int >= 2; got 1"):
        CategoricalVAE(4, classes=1)
    with pytest.raises(ValueError, match="`latents`"):
        CategoricalVAE(4, latents=0)
    q = CategoricalVAE(4, latents=8, classes=4, hidden=(3,)).posterior(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"`evaluations` must be at least 33 .*IndeCateR.*got 10"):
        samples_for_budget(scg.IndeCateR(), q, 10)
    with pytest.raises(ValueError, match=r"`evaluations` must be at least 1 \+ D·K = 7 .*got 6"):
        dataclasses.replace(SMOKE, evaluations=6)
    with pytest.raises(ValueError, match='`dataset` must be "digits" or "mnist5k"'):
        CategoricalConfig(dataset="cifar")
