"""Discrete-latent VAE: every estimator's expected gradient of *all* model parameters, exactly.

A tiny sigmoid belief net (3 pixels, 2 binary latents) has an ELBO that is a finite sum.
Score-function estimators and VIMCO are integrated by enumerating every S-tuple of latent
configurations; DisARM by the 3 × 3 cells of its uniform noise on which it is constant;
RELAX by scg's exact harness; Gumbel-softmax (biased) by finite differences of its
relaxed objective. Enumerated configurations sit along the batch dimension, so one
backward of the weighted sum gives the exact expectation.
"""

import itertools

import pytest
import torch
from _helpers import central_difference
from torch.distributions import Bernoulli, Independent

import scg
from scg.models import DISCRETE_ESTIMATORS, DiscreteVAE, TrainConfig, fit
from scg.testing import assert_unbiased

DT = torch.float64
X = torch.tensor([[1.0, 0.0, 1.0]], dtype=DT)
CONFIGS = torch.tensor(list(itertools.product([0.0, 1.0], repeat=2)), dtype=DT)  # [4, 2]


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tests/conftest.py


def _model(name, evaluations=6, hidden=()):
    torch.manual_seed(0)
    m = DiscreteVAE.from_name(name, 3, 2, hidden, evaluations=evaluations).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return m.eval()  # running baselines frozen at their initial state (b = 0, scale 1)


def _model_params(m):
    return [p for n, p in m.named_parameters() if not n.startswith("estimator.")]


def _grad(m, value):
    m.zero_grad()
    value.backward()
    return torch.cat([p.grad.reshape(-1) for p in _model_params(m)])


def _exact_neg_elbo(m, x):
    q = m.posterior(x)
    logq = q.log_prob(CONFIGS.unsqueeze(1))  # [4, 1]
    f = logq - m.log_joint(x, CONFIGS.unsqueeze(1))
    return (logq.exp() * f).sum()


def _tuples(S):
    idx = torch.tensor(list(itertools.product(range(4), repeat=S)))  # [4^S, S]
    return CONFIGS[idx].transpose(0, 1)  # [S, 4^S, 2]


@pytest.mark.parametrize("name,hidden", [("moving_average", ()), ("nvil", ()), ("rloo", ()), ("rloo", (4,))])
def test_score_function_family_expected_gradient_is_exact(name, hidden):
    m = _model(name, hidden=hidden)
    S = 2
    b = _tuples(S)
    xs = X.expand(b.shape[1], 3)
    with torch.no_grad():
        w = m.posterior(xs).log_prob(b).sum(0).exp()  # probability of each S-tuple
    est = _grad(m, (w * m.objective(xs, draws={"z": b})).sum())
    exact = _grad(m, _exact_neg_elbo(m, X))
    assert torch.allclose(est, exact, rtol=1e-10, atol=1e-12)


def test_vimco_expected_gradient_is_exact():
    m = _model("vimco")
    K = 2
    b = _tuples(K)
    xs = X.expand(b.shape[1], 3)
    with torch.no_grad():
        w = m.posterior(xs).log_prob(b).sum(0).exp()
    est = _grad(m, (w * m.objective(xs, draws={"z": b})).sum())
    q = m.posterior(xs)
    log_w = m.log_joint(xs, b) - q.log_prob(b)  # [K, 16]
    prob = q.log_prob(b).sum(0).exp()  # attached: the bound's expectation depends on q
    exact_bound = (prob * scg.objectives.log_mean_exp(log_w)).sum()
    exact = _grad(m, -exact_bound)
    assert torch.allclose(est, exact, rtol=1e-10, atol=1e-12)


def test_disarm_expected_gradient_is_exact():
    m = _model("disarm")
    with torch.no_grad():
        theta = torch.sigmoid(m.encoder.net(X))[0]  # [2]
    lo, hi = torch.minimum(theta, 1 - theta), torch.maximum(theta, 1 - theta)
    edges = [
        torch.stack([torch.zeros((), dtype=DT), lo[d], hi[d], torch.ones((), dtype=DT)]) for d in range(2)
    ]
    mids = [0.5 * (e[1:] + e[:-1]) for e in edges]
    lens = [e[1:] - e[:-1] for e in edges]
    u = torch.tensor(list(itertools.product(mids[0].tolist(), mids[1].tolist())), dtype=DT)  # [9, 2]
    w = torch.tensor([a * b for a, b in itertools.product(lens[0].tolist(), lens[1].tolist())], dtype=DT)
    xs = X.expand(9, 3)
    est = _grad(m, (w * m.objective(xs, draws={"u": u.unsqueeze(0)})).sum())
    exact = _grad(m, _exact_neg_elbo(m, X))
    assert torch.allclose(est, exact, rtol=1e-10, atol=1e-12)


def test_relax_on_the_model_cost_is_unbiased_by_the_exact_harness():
    # One latent (two uniforms: u and v) keeps the harness's grid small.
    torch.manual_seed(0)
    m = DiscreteVAE.from_name("relax", 3, 1, evaluations=3).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.5 * torch.randn_like(p))
    logits = m.encoder.net(X).detach()[0]

    def f(b):  # the model's −log p(x, b) (decoder and prior fixed)
        return -m.log_joint(X[0], b)

    assert_unbiased(
        m.estimator,
        lambda l: Independent(Bernoulli(logits=l, validate_args=False), 1),
        (logits,),
        f,
    )


def test_gumbel_gradient_is_the_derivative_of_the_relaxed_objective():
    m = _model("gumbel_softmax")
    x = X.expand(2, 3)
    u = torch.rand(3, 2, 2, dtype=DT)
    f = lambda: m.objective(x, draws={"u": u}).sum()  # noqa: E731
    g = _grad(m, f())
    params = _model_params(m)
    d = [torch.randn_like(p) for p in params]
    fd = central_difference(f, params, d, h=1e-6)
    assert float(g @ torch.cat([v.reshape(-1) for v in d])) == pytest.approx(float(fd), rel=1e-6)


#: f evaluations per sample of each name (the estimators' own ``evaluations``, stated independently).
COST = {"moving_average": 1, "nvil": 1, "rloo": 1, "vimco": 1, "disarm": 2, "relax": 3, "gumbel_softmax": 1}


@pytest.mark.parametrize("name", list(DISCRETE_ESTIMATORS))
def test_every_estimator_trains_a_tiny_model(name):
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((40, 6), 0.3))
    m = DiscreteVAE.from_name(name, 6, 4, (8,), evaluations=6)
    h = fit(m, x, x[:10], config=TrainConfig(epochs=2, batch_size=20, progress=False))
    assert len(h.epochs) == 2 and all(torch.isfinite(torch.tensor(h.val_bound)))
    assert m.num_samples == 6 // COST[name]
    assert m.log_weights(x[:3], 5).shape == (5, 3)


def test_from_name_is_the_registry_estimator_and_an_estimator_is_taken_as_is():
    torch.manual_seed(0)
    nvil = DiscreteVAE.from_name("nvil", 5, 3)
    assert isinstance(nvil.estimator, scg.ScoreFunction)
    assert [type(t).__name__ for t in nvil.estimator.baseline.transforms] == [
        "MovingAverage",
        "Learned",
        "Normalize",
    ]
    assert nvil.estimator.baseline.transforms[1].module.net[0].in_features == 5  # the baseline reads x
    relax = DiscreteVAE.from_name("relax", 5, 3)
    assert isinstance(relax.estimator, scg.RELAX) and relax.num_samples == 2
    assert DiscreteVAE.from_name("vimco", 5, 3).estimator is None
    est = scg.ARM()
    m = DiscreteVAE(5, 3, estimator=est, evaluations=4)
    assert m.estimator is est and m.num_samples == 2 and m.objective_name == "elbo"
    default = DiscreteVAE(5, 3)
    assert isinstance(default.estimator.baseline.transforms[1], scg.baselines.Learned)  # NVIL


def test_discrete_errors():
    with pytest.raises(
        TypeError, match=r"`estimator` must be an scg Estimator or None; got str\. Build one by name"
    ):
        DiscreteVAE(3, 2, estimator="arm")
    with pytest.raises(ValueError, match="`budget` must be a multiple of 3 for RELAX .*; got 4"):
        DiscreteVAE(3, 2, estimator=scg.RELAX(), evaluations=4)
    with pytest.raises(ValueError, match="`evaluations` must be >= 2 for objective='vimco'"):
        DiscreteVAE(3, 2, objective="vimco", evaluations=1)
    with pytest.raises(ValueError, match="`estimator` must be None with objective='vimco'"):
        DiscreteVAE(3, 2, estimator=scg.DisARM(), objective="vimco")
    with pytest.raises(ValueError, match=r"`objective` must be one of \('elbo', 'vimco'\); got 'iwae'"):
        DiscreteVAE(3, 2, objective="iwae")
    with pytest.raises(ValueError, match="`budget` 1 gives ScoreFunction S = 1 samples; it needs at least 2"):
        DiscreteVAE(3, 2, estimator=scg.ScoreFunction(baseline=scg.baselines.LeaveOneOut()), evaluations=1)
    with pytest.raises(TypeError, match="`dist` must be Categorical or OneHotCategorical"):
        DiscreteVAE(3, 2, estimator=scg.ARSM())
    with pytest.raises(ValueError, match="`evaluations` must be"):
        DiscreteVAE(3, 2, evaluations=0)
    with pytest.raises(ValueError, match="unknown estimator 'nope'; valid estimators: score_function"):
        DiscreteVAE.from_name("nope", 3, 2)
