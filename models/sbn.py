r"""Multi-layer sigmoid belief networks trained as stochastic computation graphs.

The generative model and its encoder, with L layers of binary units (Neal 1992;
Mnih & Gregor 2014):

.. math::
    p(x, h_{1:L}) = p(h_L) \prod_{l=2}^{L} p(h_{l-1} | h_l)\, p(x | h_1), \qquad
    q(h_{1:L} | x) = q(h_1 | x) \prod_{l=2}^{L} q(h_l | h_{l-1}),

every factor a product of Bernoullis whose logits are an affine map of the layer
above (*linear*) or a two-hidden-layer tanh network of the same width (*nonlinear*).
One training step is one :class:`scg.Graph`: each layer of the encoder is a node
with its own estimator, and the negative ELBO
:math:`\log q(h|x) − \log p(x, h)` enters as one cost per factor, so each node is
credited only with the factors downstream of it. Any scg estimator can serve a
layer; multi-point estimators (DisARM) carry their copies through the layers below.

References:
    Mnih & Gregor, "Neural Variational Inference and Learning in Belief Networks", ICML 2014.
    https://arxiv.org/abs/1402.0030
    Dong, Mnih & Tucker, "DisARM: An Antithetic Gradient Estimator for Binary Latent
    Variables", NeurIPS 2020. https://arxiv.org/abs/2006.10680
    Grathwohl et al., "Backpropagation through the Void", ICLR 2018. https://arxiv.org/abs/1711.00123
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent

import scg
from scg import baselines as B
from scg.checks import check_positive, check_positive_int
from scg.estimators import NeuralControlVariate

__all__ = ["SigmoidBeliefNet", "SBN_ESTIMATORS", "sbn_estimators"]

#: Names accepted by :func:`sbn_estimators`.
SBN_ESTIMATORS = (
    "reinforce",
    "nvil",
    "rloo",
    "disarm",
    "relax",
    "gumbel-softmax",
    "straight-through",
)


def _bernoulli(logits: Tensor) -> Distribution:
    # validation off: relaxed estimators (Gumbel-softmax) evaluate log-densities at points in (0, 1)
    return Independent(Bernoulli(logits=logits, validate_args=False), 1, validate_args=False)


def _affine(d_in: int, d_out: int, nonlinear: bool) -> nn.Module:
    if not nonlinear:
        return nn.Linear(d_in, d_out)
    return nn.Sequential(
        nn.Linear(d_in, d_out),
        nn.Tanh(),
        nn.Linear(d_out, d_out),
        nn.Tanh(),
        nn.Linear(d_out, d_out),
    )


class _Scalar(nn.Module):
    """``[..., d] -> [...]``: a baseline or control-variate network of one hidden tanh layer."""

    def __init__(self, d: int, hidden: int = 50) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


def sbn_estimators(
    name: str, x_dim: int, layers: Sequence[int], *, temperature: float = 0.5
) -> list[scg.Estimator]:
    """One estimator per layer for the named method.

    * ``"reinforce"``: ``ScoreFunction(MovingAverage())``.
    * ``"nvil"``: ``ScoreFunction(chain(MovingAverage(), Learned(net), Normalize()))`` with
      the layer's input (x, or the layer above in the encoder) as the baseline's context.
    * ``"rloo"``: ``ScoreFunction(LeaveOneOut())`` (needs ``num_samples ≥ 2``).
    * ``"disarm"``: ``DisARM()``.
    * ``"relax"``: ``RELAX(NeuralControlVariate(net, rebar=False))``, a control variate of
      the layer's own relaxed sample (LAX-style).
    * ``"gumbel-softmax"`` / ``"straight-through"``: the biased relaxations.
    """
    if name not in SBN_ESTIMATORS:
        raise ValueError(f"`name` must be one of {list(SBN_ESTIMATORS)}; got {name!r}.")
    check_positive("temperature", temperature)
    inputs = [x_dim, *layers[:-1]]
    out: list[scg.Estimator] = []
    for d_in, width in zip(inputs, layers, strict=False):
        if name == "reinforce":
            out.append(scg.ScoreFunction(B.MovingAverage()))
        elif name == "nvil":
            out.append(scg.ScoreFunction(B.chain(B.MovingAverage(), B.Learned(_Scalar(d_in)), B.Normalize())))
        elif name == "rloo":
            out.append(scg.ScoreFunction(B.LeaveOneOut()))
        elif name == "disarm":
            out.append(scg.DisARM())
        elif name == "relax":
            out.append(scg.RELAX(NeuralControlVariate(_Scalar(width), rebar=False)))
        elif name == "gumbel-softmax":
            out.append(scg.GumbelSoftmax(temperature))
        else:
            out.append(scg.StraightThrough())
    return out


class SigmoidBeliefNet(nn.Module):
    r"""An L-layer sigmoid belief network with its encoder, one :class:`scg.Graph` per step.

    Args:
        x_dim: number of binary pixels D.
        layers: widths of the stochastic layers, top last (e.g. ``(200, 200)``).
        estimators: one :class:`scg.Estimator` per layer (see :func:`sbn_estimators`);
            kept as submodules, so their control variates train with the model.
        nonlinear: two tanh hidden layers (of the layer's width) in every conditional
            instead of an affine map (keyword-only).
        context: give each layer's input to its estimator as ``context`` (NVIL's
            input-dependent baseline; keyword-only).

    Example:
        >>> import torch
        >>> from scg.models.sbn import SigmoidBeliefNet, sbn_estimators
        >>> x = torch.bernoulli(torch.full((8, 64), 0.3))
        >>> m = SigmoidBeliefNet(64, (10, 10), sbn_estimators("disarm", 64, (10, 10)))
        >>> loss = m.loss(x, num_samples=2)      # negative ELBO per data point (Monte Carlo)
        >>> loss.backward()
    """

    def __init__(
        self,
        x_dim: int,
        layers: Sequence[int],
        estimators: Sequence[scg.Estimator],
        *,
        nonlinear: bool = False,
        context: bool = True,
    ) -> None:
        super().__init__()
        check_positive_int("x_dim", x_dim)
        layers = tuple(layers)
        if not layers:
            raise ValueError("`layers` must name at least one stochastic layer; got ().")
        for w in layers:
            check_positive_int("layers", w)
        if len(estimators) != len(layers) or not all(isinstance(e, scg.Estimator) for e in estimators):
            raise ValueError(
                f"`estimators` must be {len(layers)} scg Estimators, one per layer; got {len(estimators)}."
            )
        self.x_dim, self.layers, self.nonlinear, self.context = (
            x_dim,
            layers,
            bool(nonlinear),
            bool(context),
        )
        below = (x_dim, *layers[:-1])
        self.encoders = nn.ModuleList([_affine(d, w, nonlinear) for d, w in zip(below, layers, strict=False)])
        self.decoders = nn.ModuleList([_affine(w, d, nonlinear) for d, w in zip(below, layers, strict=False)])
        self.prior_logits = nn.Parameter(torch.zeros(layers[-1]))
        self.estimators = nn.ModuleList(estimators)

    def graph(
        self,
        x: Tensor,
        num_samples: int,
        *,
        estimators: Sequence[scg.Estimator] | None = None,
        draws: dict | None = None,
    ) -> scg.Graph:
        """The graph of one estimate of the negative ELBO of ``x`` ``[B, D]``, before ``surrogate()``.

        Costs, each ``[*sample dims, B]``: ``q{l}`` = log q(h_l | ·), ``p{l}`` = −log p(h_{l−1} | h_l)
        (h_0 = x) and ``prior`` = −log p(h_L).
        """
        ests = self.estimators if estimators is None else estimators
        g = scg.Graph(num_samples, draws=draws)
        prev, hs = x, []
        for l, (enc, est) in enumerate(zip(self.encoders, ests, strict=False), 1):
            q = _bernoulli(enc(prev))
            h = g.sample(f"h{l}", q, est, context=prev if self.context else None)
            g.cost(f"q{l}", q.log_prob(h))
            hs.append(h)
            prev = h
        g.cost("prior", -_bernoulli(self.prior_logits).log_prob(hs[-1]))
        for l in range(len(hs), 0, -1):
            target = x if l == 1 else hs[l - 2]
            g.cost(f"p{l}", -_bernoulli(self.decoders[l - 1](hs[l - 1])).log_prob(target))
        return g

    def loss(self, x: Tensor, *, num_samples: int = 1) -> Tensor:
        """Surrogate of the negative ELBO per data point (its value is the Monte Carlo estimate)."""
        return self.graph(x, num_samples).surrogate() / x.shape[0]

    @torch.no_grad()
    def elbo(self, x: Tensor, *, num_samples: int = 1) -> Tensor:
        """Monte Carlo ELBO per data point with exact discrete samples (whatever the training estimators)."""
        plain = [scg.ScoreFunction() for _ in self.layers]
        return -self.graph(x, num_samples, estimators=plain).surrogate() / x.shape[0]
