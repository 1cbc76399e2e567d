"""A catalogue of bad inputs: each raises ValueError/TypeError naming the argument.

Every row of :data:`CASES` is (id, a callable that makes the bad call, the expected
exception type, a regex the message must match). The CLI rows (:data:`CLI_CASES`)
must exit with code 2 and a one-line ``error:`` message on stderr, no traceback.
Rows marked ``xfail(strict=True)`` document inputs whose error is still raw or unclear.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Normal

import scg
from scg import baselines as B
from scg.diagnostics import gradient_samples, summary
from scg.minibatch import Minibatch, subsample
from scg.testing import assert_unbiased, exact_moments


def _normal():
    return Normal(torch.zeros(2, requires_grad=True), torch.ones(2))


def _bern():
    return Bernoulli(logits=torch.zeros(2, requires_grad=True))


def _sq(z):
    return z**2


def _exp(f=_sq, dist=None, est=None, **kw):
    return lambda: scg.expectation(
        f, dist() if callable(dist) else (dist if dist is not None else _normal()), est, **kw
    )


# --- Graph helpers ---------------------------------------------------------------------


def _graph_dup():
    g = scg.Graph(num_samples=2)
    g.sample("a", _normal())
    g.sample("a", _normal())


def _graph_cost_dup_node():
    g = scg.Graph(num_samples=2)
    z = g.sample("a", _normal())
    g.cost("a", (z**2))


def _graph_depends_unknown():
    g = scg.Graph(num_samples=2)
    g.sample("a", _normal())
    g.sample("b", _normal(), depends_on=["nope"])


def _graph_depends_str():
    g = scg.Graph(num_samples=2)
    g.sample("a", _normal())
    g.sample("b", _normal(), depends_on="a")


def _graph_cost_depends_unknown():
    g = scg.Graph(num_samples=2)
    z = g.sample("a", _normal())
    g.cost("c", z**2, depends_on=["zz"])


def _graph_name(name):
    def call():
        g = scg.Graph(num_samples=2)
        g.sample(name, _normal())

    return call


def _graph_cost(value_fn, **kw):
    def call():
        g = scg.Graph(num_samples=3)
        z = g.sample("a", _normal())
        g.cost("c", value_fn(z), **kw)
        g.surrogate()

    return call


def _graph_no_cost():
    g = scg.Graph(num_samples=2)
    g.sample("a", _normal())
    g.surrogate()


def _graph_reuse():
    g = scg.Graph(num_samples=2)
    z = g.sample("a", _normal())
    g.cost("c", z**2)
    g.surrogate()
    g.sample("b", _normal())


def _graph_sample_not_dist():
    g = scg.Graph(num_samples=2)
    g.sample("a", torch.zeros(2))


def _graph_sample_bad_estimator():
    g = scg.Graph(num_samples=2)
    g.sample("a", _normal(), "pathwise")


def _graph_draws_bad_shape():
    g = scg.Graph(num_samples=2)
    g.sample("a", _normal())
    g.cost("c", g.sample("b", _normal()) ** 2)
    g.surrogate()
    draws = {k: {n: t[:1] for n, t in v.items()} for k, v in g.draws.items()}
    g2 = scg.Graph(num_samples=2, draws=draws)
    g2.sample("a", _normal())


def _graph_draws_inner_not_mapping():
    scg.Graph(num_samples=2, draws={"a": 3})


# --- gradient_samples helpers ----------------------------------------------------------

_P = torch.zeros(2, requires_grad=True)


def _gfn(p):
    return (p[0] ** 2).sum()


def _gs(**kw):
    base = dict(fn=_gfn, params=[_P], num=4)
    base.update(kw)
    return lambda: gradient_samples(base.pop("fn"), base.pop("params"), base.pop("num"), **base)


def _noncontig():
    return torch.zeros(2, 4).t()


# --- testing helpers -------------------------------------------------------------------

_theta = torch.tensor([0.3])


def _mk(theta):
    return Normal(theta, 1.0)


def _em(**kw):
    return lambda: exact_moments(scg.Pathwise(), _mk, _theta, _sq, **kw)


def _au(**kw):
    return lambda: assert_unbiased(scg.Pathwise(), _mk, _theta, _sq, **kw)


# --- objectives ------------------------------------------------------------------------


def _o(fn, log_p, log_q, **kw):
    return lambda: fn(log_p, log_q, **kw)


_Z = torch.zeros(4, 3)
obj = scg.objectives


# --- models ----------------------------------------------------------------------------


def _tc(**kw):
    from scg.models import TrainConfig

    return lambda: TrainConfig(**kw)


def _fit(model=None, train=None, **kw):
    def call():
        from scg.models import VAE, BernoulliDecoder, GaussianEncoder, TrainConfig, fit

        m = model if model is not None else VAE(GaussianEncoder(4, 2, (4,)), BernoulliDecoder(2, 4, (4,)))
        x = train if train is not None else torch.rand(8, 4).round()
        kw.setdefault("config", TrainConfig(epochs=1, batch_size=4, progress=False))
        fit(m, x, **kw)

    return call


def _data(name, **kw):
    def call():
        from scg.models import data

        getattr(data, name)(**kw)

    return call


TE, VE = TypeError, ValueError
xf = lambda reason: pytest.mark.xfail(strict=True, reason=reason)  # noqa: E731

CASES = [
    # estimator constructors
    (
        "gumbel-temperature-neg",
        lambda: scg.GumbelSoftmax(-1.0),
        VE,
        r"`temperature` must be positive",
    ),
    (
        "gumbel-temperature-zero",
        lambda: scg.GumbelSoftmax(0.0),
        VE,
        r"`temperature` must be positive",
    ),
    (
        "gumbel-temperature-inf",
        lambda: scg.GumbelSoftmax(math.inf),
        VE,
        r"`temperature` must be positive and finite",
    ),
    (
        "gumbel-temperature-nan",
        lambda: scg.GumbelSoftmax(math.nan),
        VE,
        r"`temperature` must be positive",
    ),
    (
        "gumbel-temperature-str",
        lambda: scg.GumbelSoftmax("hot"),
        TE,
        r"`temperature` must be a positive float; got str",
    ),
    (
        "gumbel-temperature-bool",
        lambda: scg.GumbelSoftmax(True),
        TE,
        r"`temperature` must be a positive float; got bool",
    ),
    (
        "gumbel-temperature-tensor",
        lambda: scg.GumbelSoftmax(torch.tensor(1.0)),
        TE,
        r"`temperature` must be a positive float",
    ),
    (
        "score-baseline-str",
        lambda: scg.ScoreFunction(baseline="loo"),
        TE,
        r"`baseline` must be a control variate from scg.baselines or None; got str",
    ),
    (
        "score-baseline-float",
        lambda: scg.ScoreFunction(baseline=0.5),
        TE,
        r"`baseline` must be a control variate from scg.baselines or None; got float",
    ),
    (
        "score-baseline-module",
        lambda: scg.ScoreFunction(baseline=nn.Linear(1, 1)),
        TE,
        r"`baseline` must be a control variate from scg.baselines or None; got Linear",
    ),
    (
        "pathwise-baseline-str",
        lambda: scg.Pathwise(baseline="x"),
        TE,
        r"`baseline` must be a control variate from scg.baselines or None; got str",
    ),
    (
        "pathwise-baseline-normalize",
        lambda: scg.Pathwise(baseline=B.Normalize()),
        VE,
        r"`baseline`",
    ),
    (
        "mv-baseline-str",
        lambda: scg.MeasureValued(baseline="x"),
        TE,
        r"`baseline` must be a control variate from scg.baselines or None; got str",
    ),
    ("mv-baseline-loo", lambda: scg.MeasureValued(baseline=B.LeaveOneOut()), VE, r"`baseline`"),
    (
        "relax-cv-str",
        lambda: scg.RELAX(control_variate="rebar"),
        TE,
        r"`control_variate` must be an nn.Module; got str",
    ),
    (
        "relax-cv-lambda",
        lambda: scg.RELAX(control_variate=lambda z, f: z),
        TE,
        r"`control_variate` must be an nn.Module",
    ),
    (
        "rebar-temperature",
        lambda: scg.estimators.relax.REBARControlVariate(temperature=0.0),
        VE,
        r"`temperature` must be positive",
    ),
    # control variates
    (
        "moving-average-decay-1",
        lambda: B.MovingAverage(1.0),
        VE,
        r"`decay` must be in \[0, 1\); got 1.0",
    ),
    ("moving-average-decay-neg", lambda: B.MovingAverage(-0.1), VE, r"`decay`"),
    ("moving-average-decay-big", lambda: B.MovingAverage(1.5), VE, r"`decay`"),
    (
        "moving-average-decay-str",
        lambda: B.MovingAverage("0.9"),
        TE,
        r"`decay` must be a float in \[0, 1\); got str",
    ),
    ("moving-average-decay-nan", lambda: B.MovingAverage(math.nan), VE, r"`decay`"),
    ("normalize-decay", lambda: B.Normalize(decay=2.0), VE, r"`decay`"),
    (
        "delta-coefficient-str",
        lambda: B.Delta("best"),
        VE,
        r"`coefficient` must be a float or \"optimal\"",
    ),
    ("delta-coefficient-list", lambda: B.Delta([1.0]), TE, r"`coefficient`"),
    ("delta-coefficient-bool", lambda: B.Delta(True), TE, r"`coefficient`"),
    (
        "delta-coefficient-nan",
        lambda: B.Delta(math.nan),
        VE,
        r"`coefficient` must be a finite float",
    ),
    (
        "delta-coefficient-inf",
        lambda: B.Delta(-math.inf),
        VE,
        r"`coefficient` must be a finite float",
    ),
    ("delta-decay", lambda: B.Delta(decay=1.0), VE, r"`decay`"),
    ("constant-str", lambda: B.Constant("0"), TE, r"`value` must be a float or a tensor; got str"),
    (
        "constant-bool",
        lambda: B.Constant(True),
        TE,
        r"`value` must be a float or a tensor; got bool",
    ),
    ("constant-nan", lambda: B.Constant(math.nan), VE, r"`value` must be finite; got nan"),
    (
        "learned-not-module",
        lambda: B.Learned(lambda x: x),
        TE,
        r"`module` must be a torch.nn.Module",
    ),
    (
        "chain-not-cv",
        lambda: B.chain(B.LeaveOneOut(), 3),
        TE,
        r"`chain` arguments must be scg.baselines control variates; got int",
    ),
    # scg.expectation
    ("expectation-f-not-callable", _exp(f=3), TE, r"`f` must be callable; got int"),
    (
        "expectation-dist-tensor",
        _exp(dist=torch.zeros(2), est=scg.ScoreFunction()),
        TE,
        r"`dist` must be a torch.distributions.Distribution; got Tensor",
    ),
    (
        "expectation-dist-tensor-default",
        lambda: scg.expectation(_sq, torch.zeros(2)),
        TE,
        r"`dist` must be a torch.distributions.Distribution",
    ),
    (
        "expectation-num-samples-0",
        _exp(est=scg.Pathwise(), num_samples=0),
        VE,
        r"`num_samples` must be >= 1; got 0",
    ),
    (
        "expectation-num-samples-neg",
        _exp(est=scg.Pathwise(), num_samples=-1),
        VE,
        r"`num_samples` must be >= 1; got -1",
    ),
    (
        "expectation-num-samples-float",
        _exp(est=scg.Pathwise(), num_samples=1.5),
        TE,
        r"`num_samples` must be an int; got float",
    ),
    (
        "expectation-num-samples-bool",
        _exp(est=scg.Pathwise(), num_samples=True),
        TE,
        r"`num_samples` must be an int; got bool",
    ),
    (
        "expectation-num-samples-0-default",
        _exp(num_samples=0),
        VE,
        r"`num_samples` must be >= 1; got 0",
    ),
    (
        "expectation-num-samples-str-default",
        _exp(num_samples="4"),
        TE,
        r"`num_samples` must be an int; got str",
    ),
    (
        "expectation-estimator-str",
        _exp(est="pathwise"),
        TE,
        r"`estimator` must be an scg Estimator; got str",
    ),
    (
        "expectation-estimator-class",
        _exp(est=scg.Pathwise),
        TE,
        r"`estimator` must be an scg Estimator",
    ),
    (
        "expectation-estimator-baseline",
        _exp(est=B.LeaveOneOut()),
        TE,
        r"`estimator` must be an scg Estimator; got LeaveOneOut",
    ),
    (
        "expectation-cost-shape-sum",
        _exp(f=lambda z: z.sum(-1), est=scg.Pathwise(), num_samples=3),
        VE,
        r"`f` must map samples .* to costs \[S, \*batch_shape\]",
    ),
    (
        "expectation-cost-shape-scalar",
        _exp(f=lambda z: z.sum(), est=scg.ScoreFunction(), num_samples=3),
        VE,
        r"`f` must map samples",
    ),
    (
        "expectation-cost-shape-extra",
        _exp(f=lambda z: z[..., None].expand(*z.shape, 2), est=scg.Pathwise(), num_samples=3),
        VE,
        r"`f` must map samples",
    ),
    (
        "expectation-cost-float",
        _exp(f=lambda z: 1.0, est=scg.Pathwise()),
        TE,
        r"`f` must return a torch.Tensor; got float",
    ),
    (
        "expectation-cost-none",
        _exp(f=lambda z: None, est=scg.Pathwise()),
        TE,
        r"`f` must return a torch.Tensor; got NoneType",
    ),
    (
        "expectation-cost-int",
        _exp(f=lambda b: b.long(), dist=_bern, est=scg.ScoreFunction()),
        TE,
        r"`f` must return a floating-point tensor; got dtype torch.int64",
    ),
    (
        "expectation-cost-bool",
        _exp(f=lambda b: b > 0.5, dist=_bern, est=scg.ScoreFunction()),
        TE,
        r"`f` must return a floating-point tensor; got dtype torch.bool",
    ),
    (
        "expectation-cost-inf-score",
        _exp(f=lambda b: torch.log(b * 0.0), dist=_bern, est=scg.ScoreFunction(), num_samples=2),
        VE,
        r"`f` must return finite costs",
    ),
    (
        "expectation-cost-nan-pathwise",
        _exp(f=lambda z: z * math.nan, est=scg.Pathwise()),
        VE,
        r"`f` must return finite costs",
    ),
    (
        "expectation-cost-inf-disarm",
        _exp(f=lambda b: torch.log(b * 0.0), dist=_bern, est=scg.DisARM()),
        VE,
        r"`f` must return finite costs",
    ),
    (
        "expectation-cost-inf-mv",
        _exp(f=lambda b: torch.log(b * 0.0), dist=_bern, est=scg.MeasureValued()),
        VE,
        r"`f` must return finite costs",
    ),
    (
        "expectation-cost-inf-relax",
        _exp(f=lambda b: torch.log(b * 0.0), dist=_bern, est=scg.RELAX()),
        VE,
        r"`f` must return finite costs",
    ),
    (
        "expectation-loo-one-sample",
        _exp(dist=_bern, est=scg.ScoreFunction(B.LeaveOneOut()), num_samples=1),
        VE,
        r"`num_samples` must be >= 2 for LeaveOneOut; got 1",
    ),
    (
        "expectation-pathwise-bernoulli",
        _exp(dist=_bern, est=scg.Pathwise()),
        TE,
        r"`dist` must be reparameterisable for Pathwise",
    ),
    (
        "expectation-disarm-normal",
        _exp(est=scg.DisARM()),
        TE,
        r"`dist` must be Bernoulli .* for DisARM; got Normal",
    ),
    (
        "expectation-gumbel-normal",
        _exp(est=scg.GumbelSoftmax(1.0)),
        TE,
        r"`dist` must be Bernoulli, Categorical or OneHotCategorical",
    ),
    (
        "expectation-context-str",
        _exp(est=scg.ScoreFunction(B.Learned(nn.Linear(1, 1))), num_samples=2, context="x"),
        TE,
        r"`context`",
    ),
    # Graph
    (
        "graph-num-samples-0",
        lambda: scg.Graph(num_samples=0),
        VE,
        r"`num_samples` must be >= 1; got 0",
    ),
    (
        "graph-num-samples-float",
        lambda: scg.Graph(num_samples=2.0),
        TE,
        r"`num_samples` must be an int; got float",
    ),
    (
        "graph-num-samples-bool",
        lambda: scg.Graph(num_samples=True),
        TE,
        r"`num_samples` must be an int; got bool",
    ),
    (
        "graph-draws-list",
        lambda: scg.Graph(num_samples=2, draws=[1]),
        TE,
        r"`draws` must be a mapping node name -> draws; got list",
    ),
    (
        "graph-draws-inner-int",
        _graph_draws_inner_not_mapping,
        TE,
        r"`draws\['a'\]` must be a mapping law name -> tensor; got int",
    ),
    (
        "graph-draws-wrong-shape",
        _graph_draws_bad_shape,
        VE,
        r"`draws\['a'\]\['eps'\]` must have shape \[2, 2\]; got \[1, 2\]",
    ),
    ("graph-name-empty", _graph_name(""), TE, r"`name` must be a non-empty str"),
    ("graph-name-int", _graph_name(3), TE, r"`name` must be a non-empty str; got 3"),
    ("graph-name-none", _graph_name(None), TE, r"`name` must be a non-empty str"),
    (
        "graph-name-duplicate",
        _graph_dup,
        VE,
        r"`name` must be unique in the graph; 'a' is already a",
    ),
    ("graph-cost-name-of-node", _graph_cost_dup_node, VE, r"`name` must be unique in the graph"),
    (
        "graph-depends-on-unknown",
        _graph_depends_unknown,
        VE,
        r"`depends_on` must name earlier nodes; got 'nope'",
    ),
    (
        "graph-depends-on-str",
        _graph_depends_str,
        TE,
        r"`depends_on` must be a sequence of node names; got str",
    ),
    (
        "graph-cost-depends-on-unknown",
        _graph_cost_depends_unknown,
        VE,
        r"`depends_on` must name earlier nodes",
    ),
    (
        "graph-sample-not-dist",
        _graph_sample_not_dist,
        TE,
        r"`dist` of node 'a' must be a torch.distributions.Distribution",
    ),
    (
        "graph-sample-estimator-str",
        _graph_sample_bad_estimator,
        TE,
        r"`estimator` of node 'a' must be an scg Estimator",
    ),
    (
        "graph-cost-not-tensor",
        _graph_cost(lambda z: 1.0),
        TE,
        r"`value` of cost 'c' must be a torch.Tensor; got float",
    ),
    (
        "graph-cost-int",
        _graph_cost(lambda z: z.long()),
        TE,
        r"`value` of cost 'c' must be a floating-point tensor",
    ),
    (
        "graph-cost-no-sample-dim",
        _graph_cost(lambda z: z.sum(0)),
        VE,
        r"`value` of cost 'c' must have shape \[\*sample dims, \*batch\]",
    ),
    (
        "graph-cost-wrong-sample-dim",
        _graph_cost(lambda z: torch.zeros(5, 2) + z.sum()),
        VE,
        r"`value` of cost 'c' must have shape",
    ),
    ("graph-cost-scale-str", _graph_cost(lambda z: z**2, scale="2"), TE, r"`scale`"),
    ("graph-cost-scale-neg", _graph_cost(lambda z: z**2, scale=-1.0), VE, r"`scale`"),
    ("graph-cost-scale-nan", _graph_cost(lambda z: z**2, scale=math.nan), VE, r"`scale`"),
    ("graph-cost-scale-inf", _graph_cost(lambda z: z**2, scale=math.inf), VE, r"`scale`"),
    ("graph-no-cost", _graph_no_cost, VE, r"a Graph needs at least one cost before surrogate\(\)"),
    (
        "graph-reuse-after-surrogate",
        _graph_reuse,
        VE,
        r"cannot call sample\(\): this Graph already produced its surrogate\(\); a Graph is used once",
    ),
    # objectives
    (
        "elbo-log-p-list",
        _o(obj.elbo, [0.0], _Z),
        TE,
        r"`log_p` must be a torch.Tensor \[K, \*batch\]; got list",
    ),
    (
        "elbo-log-q-scalar",
        _o(obj.elbo, _Z, torch.tensor(0.0)),
        VE,
        r"`log_q` must have shape \[K, \*batch\]",
    ),
    (
        "elbo-shape-mismatch",
        _o(obj.elbo, _Z, torch.zeros(4, 2)),
        VE,
        r"`log_p` and `log_q` must have the same shape \[K, \*batch\]; got \[4, 3\] and \[4, 2\]",
    ),
    ("elbo-int", _o(obj.elbo, _Z.long(), _Z), TE, r"`log_p` must be a floating-point tensor"),
    ("elbo-nan", _o(obj.elbo, _Z * math.nan, _Z), VE, r"`log_p` must not hold NaN or \+inf"),
    ("iwae-gradient-name", _o(obj.iwae, _Z, _Z, gradient="rws"), VE, r"`gradient` must be one of"),
    (
        "iwae-dreg-no-z",
        _o(obj.iwae, _Z, _Z, gradient="dreg"),
        VE,
        r"`z` must be given for gradient=\"dreg\"",
    ),
    (
        "iwae-z-list",
        _o(obj.iwae, _Z, _Z, gradient="dreg", z=[0.0]),
        TE,
        r"`z` must be a torch.Tensor; got list",
    ),
    ("iwae-log-q-inf", _o(obj.iwae, _Z, _Z - math.inf), VE, r"`log_q` must be finite"),
    (
        "iwae-log-p-all-neg-inf",
        _o(obj.iwae, _Z - math.inf, _Z),
        VE,
        r"`log_p` must be finite for at least one",
    ),
    (
        "vimco-one-sample",
        _o(obj.vimco, torch.zeros(1, 3), torch.zeros(1, 3)),
        VE,
        r"`log_p` must hold K >= 2 samples on dim 0; got K = 1",
    ),
    ("vimco-nan", _o(obj.vimco, _Z, _Z * math.nan), VE, r"`log_q` must not hold NaN"),
    # gradient_samples
    ("gs-fn-not-callable", _gs(fn=3), TE, r"`fn` must be callable; got int"),
    ("gs-params-empty-list", _gs(params=[]), VE, r"`params` must not be empty"),
    ("gs-params-empty-dict", _gs(params={}), VE, r"`params` must not be empty"),
    (
        "gs-params-int-tensor",
        _gs(params=[torch.zeros(2, dtype=torch.long)]),
        TE,
        r"`params` must be floating-point tensors",
    ),
    (
        "gs-params-list-of-float",
        _gs(params=[1.0]),
        TE,
        r"`params` elements must be tensors; got float at index 0",
    ),
    (
        "gs-params-dict-of-str",
        _gs(params={"a": "x"}),
        TE,
        r"`params` values must be tensors; got str for 'a'",
    ),
    (
        "gs-params-str",
        _gs(params="p"),
        TE,
        r"`params` must be a dict name -> tensor or a sequence of tensors; got str",
    ),
    ("gs-num-0", _gs(num=0), VE, r"`num` must be >= 1; got 0"),
    ("gs-num-float", _gs(num=2.5), TE, r"`num` must be an int; got float"),
    ("gs-num-bool", _gs(num=True), TE, r"`num` must be an int; got bool"),
    ("gs-chunk-size-0", _gs(chunk_size=0), VE, r"`chunk_size` must be >= 1; got 0"),
    ("gs-chunk-size-float", _gs(chunk_size=1.5), TE, r"`chunk_size` must be an int"),
    ("gs-out-list", _gs(out=[0.0]), TE, r"`out` must be a torch.Tensor or None; got list"),
    (
        "gs-out-shape",
        _gs(out=torch.zeros(3, 2)),
        VE,
        r"`out` must have shape \[num, P\] = \[4, 2\]; got \[3, 2\]",
    ),
    (
        "gs-out-dtype",
        _gs(out=torch.zeros(4, 2, dtype=torch.float64)),
        TE,
        r"`out` must have the dtype of the gradients",
    ),
    (
        "gs-out-device",
        _gs(out=torch.zeros(4, 2, device="meta")),
        VE,
        r"`out` must be on the device of `params`",
    ),
    ("gs-out-noncontiguous", _gs(out=_noncontig()), VE, r"`out` must be contiguous"),
    (
        "gs-out-requires-grad",
        _gs(out=torch.zeros(4, 2, requires_grad=True)),
        VE,
        r"`out` must not require grad",
    ),
    ("gs-fn-non-scalar", _gs(fn=lambda p: p[0] ** 2), VE, r"`fn` must return a scalar"),
    (
        "gs-fn-returns-float",
        _gs(fn=lambda p: 1.0),
        TE,
        r"`fn` must return a torch.Tensor; got float",
    ),
    # summary
    (
        "summary-list",
        lambda: summary([[1.0]]),
        TE,
        r"`samples` must be a torch.Tensor \[N, P\]; got list",
    ),
    (
        "summary-1d",
        lambda: summary(torch.zeros(4)),
        VE,
        r"`samples` must have shape \[N, P\]; got shape \[4\]",
    ),
    (
        "summary-one-row",
        lambda: summary(torch.zeros(1, 2)),
        VE,
        r"`samples` must hold N >= 2 estimates",
    ),
    (
        "summary-reference-list",
        lambda: summary(torch.zeros(4, 2), [0.0, 0.0]),
        TE,
        r"`reference` must be a torch.Tensor \[P\]; got list",
    ),
    (
        "summary-reference-shape",
        lambda: summary(torch.zeros(4, 2), torch.zeros(3)),
        VE,
        r"`reference` must have P = 2 elements; got shape \[3\]",
    ),
    (
        "summary-names-length",
        lambda: summary(torch.zeros(4, 2)).table(names=["a"]),
        VE,
        r"`names` must have one entry per parameter \(2\); got 1",
    ),
    # minibatch
    ("subsample-batch-0", lambda: subsample(10, 0), VE, r"`batch_size` must be >= 1; got 0"),
    (
        "subsample-batch-gt-n",
        lambda: subsample(10, 11),
        VE,
        r"`batch_size` must be <= `n` = 10 .*; got 11",
    ),
    ("subsample-n-0", lambda: subsample(0, 1), VE, r"`n` must be >= 1; got 0"),
    ("subsample-n-float", lambda: subsample(10.0, 2), TE, r"`n` must be an int; got float"),
    (
        "subsample-batch-float",
        lambda: subsample(10, 2.0),
        TE,
        r"`batch_size` must be an int; got float",
    ),
    ("subsample-generator-str", lambda: subsample(10, 2, generator="g"), TE, r"`generator`"),
    ("minibatch-batch-gt-n", lambda: Minibatch(5, 6), VE, r"`batch_size` must be <= `n` = 5"),
    ("minibatch-n-bool", lambda: Minibatch(True, 1), TE, r"`n` must be an int; got bool"),
    ("minibatch-batch-neg", lambda: Minibatch(5, -1), VE, r"`batch_size` must be >= 1; got -1"),
    # exact_moments / assert_unbiased
    ("exact-num-samples-0", _em(num_samples=0), VE, r"`num_samples` must be >= 1; got 0"),
    ("exact-num-samples-float", _em(num_samples=1.5), TE, r"`num_samples` must be an int"),
    ("exact-nodes-0", _em(nodes=0), VE, r"`nodes` must be >= 1; got 0"),
    ("exact-nodes-str", _em(nodes="many"), TE, r"`nodes` must be an int; got str"),
    ("exact-nodes-unknown-law", _em(nodes={"nope": 8}), VE, r"`nodes`"),
    ("exact-max-points-0", _em(max_points=0), VE, r"`max_points` must be >= 1; got 0"),
    ("exact-max-points-float", _em(max_points=1e6), TE, r"`max_points` must be an int"),
    ("exact-max-points-too-small", _em(nodes=64, max_points=2), VE, r"> `max_points` = 2"),
    ("exact-rtol-neg", _em(rtol=-1.0), VE, r"`rtol` must be a finite number >= 0; got -1.0"),
    ("exact-atol-neg", _em(atol=-1.0), VE, r"`atol` must be a finite number >= 0; got -1.0"),
    ("exact-rtol-str", _em(rtol="1e-8"), VE, r"`rtol` must be a finite number >= 0; got '1e-8'"),
    (
        "exact-estimator-str",
        lambda: exact_moments("pathwise", _mk, _theta, _sq),
        TE,
        r"`estimator` must be an scg Estimator; got str",
    ),
    (
        "exact-params-list-of-float",
        lambda: exact_moments(scg.Pathwise(), _mk, [0.3], _sq),
        TE,
        r"`params\[0\]` must be a floating-point tensor; got float",
    ),
    (
        "exact-f-not-callable",
        lambda: exact_moments(scg.Pathwise(), _mk, _theta, 3),
        TE,
        r"`f` must be callable; got int",
    ),
    (
        "unbiased-f-not-callable",
        lambda: assert_unbiased(scg.Pathwise(), _mk, _theta, None),
        TE,
        r"`f` must be callable; got NoneType",
    ),
    (
        "exact-make-dist-not-callable",
        lambda: exact_moments(scg.Pathwise(), Normal(0.0, 1.0), _theta, _sq),
        TE,
        r"`make_dist` must be callable; got Normal",
    ),
    ("unbiased-atol-neg", _au(atol=-1.0), VE, r"`atol` must be a finite number >= 0"),
    ("unbiased-rtol-nan", _au(rtol=math.nan), VE, r"`rtol` must be a finite number >= 0; got nan"),
    ("unbiased-num-samples-0", _au(num_samples=0), VE, r"`num_samples` must be >= 1"),
    ("unbiased-nodes-neg", _au(nodes=-3), VE, r"`nodes` must be >= 1; got -3"),
    # stop_gradient
    (
        "stop-gradient-tensor",
        lambda: scg.stop_gradient(torch.zeros(2)),
        TE,
        r"`dist` must be a torch.distributions.Distribution; got Tensor",
    ),
    (
        "stop-gradient-none",
        lambda: scg.stop_gradient(None),
        TE,
        r"`dist` must be a torch.distributions.Distribution; got NoneType",
    ),
    (
        "stop-gradient-module",
        lambda: scg.stop_gradient(nn.Linear(1, 1)),
        TE,
        r"`dist` must be a torch.distributions.Distribution; got Linear",
    ),
    # TrainConfig / fit
    ("trainconfig-epochs-0", _tc(epochs=0), VE, r"`epochs` must be >= 1; got 0"),
    ("trainconfig-epochs-float", _tc(epochs=1.5), TE, r"`epochs` must be an int; got float"),
    ("trainconfig-batch-size-0", _tc(batch_size=0), VE, r"`batch_size` must be >= 1; got 0"),
    ("trainconfig-lr-0", _tc(lr=0.0), VE, r"`lr` must be positive and finite; got 0.0"),
    ("trainconfig-lr-str", _tc(lr="1e-3"), TE, r"`lr` must be a positive float; got str"),
    ("trainconfig-lr-inf", _tc(lr=math.inf), VE, r"`lr` must be positive and finite"),
    ("trainconfig-patience-0", _tc(patience=0), VE, r"`patience` must be >= 1; got 0"),
    ("trainconfig-val-samples-0", _tc(val_samples=0), VE, r"`val_samples` must be >= 1; got 0"),
    ("trainconfig-seed-str", _tc(seed="0"), TE, r"`seed`"),
    ("fit-train-list", _fit(train=[[0.0]]), TE, r"`train`"),
    ("fit-train-1d", _fit(train=torch.zeros(8)), VE, r"`train`"),
    ("fit-config-dict", _fit(config={"epochs": 1}), TE, r"`config`"),
    ("fit-model-not-module", _fit(model=object()), TE, r"`model`"),
    (
        "fit-device-bad",
        _fit(device="gpu0"),
        VE,
        r"`device` must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"; got 'gpu0'",
    ),
    ("fit-stop-after-0", _fit(stop_after=0), VE, r"`stop_after`"),
    # data loaders
    (
        "data-digits-threshold",
        _data("digits", threshold=2.0),
        VE,
        r"`threshold` must be in \(0, 1\); got 2.0",
    ),
    ("data-digits-dtype", _data("digits", dtype=torch.int64), (TE, VE), r"`dtype`"),
    (
        "data-linear-data-dim-0",
        _data("linear_gaussian", data_dim=0),
        VE,
        r"`data_dim` must be >= 1; got 0",
    ),
    (
        "data-linear-noise-neg",
        _data("linear_gaussian", noise_std=-0.5),
        VE,
        r"`noise_std` must be positive and finite; got -0.5",
    ),
    (
        "data-linear-correlation",
        _data("linear_gaussian", correlation=1.5),
        VE,
        r"`correlation` must be in \[0, 1\); got 1.5",
    ),
    ("data-linear-sizes", _data("linear_gaussian", sizes=(10, 0)), (VE, TE), r"`sizes`"),
    (
        "data-breast-test-fraction",
        _data("breast_cancer", test_fraction=1.0),
        VE,
        r"`test_fraction` must be in \[0, 1\); got 1.0",
    ),
    (
        "data-breast-test-fraction-neg",
        _data("breast_cancer", test_fraction=-0.1),
        VE,
        r"`test_fraction` must be in \[0, 1\); got -0.1",
    ),
    (
        "data-load-mnist-missing",
        _data("load_mnist", path="/nonexistent/mnist"),
        VE,
        r"`path` must be a folder of IDX files or an existing .npz file",
    ),
    (
        "data-binarize-list",
        lambda: __import__("scg.models.data", fromlist=["binarize"]).binarize([0.5]),
        TE,
        r"`x`",
    ),
]


def _as_param(row):
    """``(id, call, exc, match[, mark])`` -> a pytest param."""
    return pytest.param(*row[1:4], id=row[0], marks=row[4:])


@pytest.mark.parametrize("call,exc,match", [_as_param(r) for r in CASES])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# --- the CLI -------------------------------------------------------------------------------

CLI_CASES = [
    ("unknown-command", ["frobnicate"], r"invalid choice: 'frobnicate'"),
    (
        "run-unknown-study",
        ["run", "no-such-study", "--smoke"],
        r"unknown study 'no-such-study'; valid studies: .*gaussian",
    ),
    (
        "run-set-no-equals",
        ["run", "gaussian", "--smoke", "--set", "steps"],
        r"--set expects key=value",
    ),
    (
        "run-set-unknown-key",
        ["run", "gaussian", "--smoke", "--set", "nope=1"],
        r"--set: unknown key 'nope'",
    ),
    (
        "run-set-bad-value",
        ["run", "bernoulli-toy", "--smoke", "--set", "steps=many"],
        r"--set steps='many': expected an integer",
    ),
    ("run-smoke-and-full", ["run", "gaussian", "--smoke", "--full"], r"not allowed with"),
    (
        "run-seed-str",
        ["run", "gaussian", "--smoke", "--seed", "x"],
        r"argument --seed: invalid int value: 'x'",
    ),
    (
        "run-set-bad-float",
        ["run", "bernoulli-toy", "--smoke", "--set", "lr=fast", "--out", "{tmp}/o"],
        r"--set lr='fast'",
    ),
    (
        "run-device-cuda-index",
        ["run", "gaussian", "--smoke", "--device", "cuda:x", "--out", "{tmp}/o"],
        r"`device` must be",
    ),
    ("run-no-name", ["run"], r"the following arguments are required: name"),
    (
        "compare-problem-missing-module",
        ["compare", "--problem", "no_such_module_xyz:make", "--smoke"],
        r"no_such_module_xyz",
    ),
    ("compare-S-float", ["compare", "-S", "1.5", "--smoke"], r"--num-samples/-S"),
    (
        "compare-seed-str",
        ["compare", "--seed", "x", "--smoke"],
        r"argument --seed: invalid int value: 'x'",
    ),
    (
        "run-device-bad",
        ["run", "gaussian", "--smoke", "--device", "tpu", "--out", "{tmp}/o"],
        r"`device` must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"; got 'tpu'",
    ),
    (
        "run-out-a-file",
        ["run", "gaussian", "--smoke", "--out", "{tmp}/afile"],
        r"`--out` must be a folder",
    ),
    (
        "compare-unknown-problem",
        ["compare", "--problems", "nope", "--smoke"],
        r"argument --problems: unknown problem 'nope'; valid problems",
    ),
    (
        "compare-unknown-estimator",
        ["compare", "--estimators", "nope", "--smoke"],
        r"argument --estimators: unknown estimator 'nope'; valid estimators",
    ),
    (
        "compare-S-0",
        ["compare", "-S", "0", "--smoke"],
        r"argument --num-samples/-S: must be >= 1; got 0",
    ),
    (
        "compare-N-neg",
        ["compare", "-N", "-3", "--smoke"],
        r"argument --num-estimates/-N: must be >= 1; got -3",
    ),
    (
        "compare-device-bad",
        ["compare", "--device", "tpu", "--smoke"],
        r"argument --device: invalid choice: 'tpu'",
    ),
    (
        "compare-engine-bad",
        ["compare", "--engine", "jit", "--smoke"],
        r"argument --engine: invalid choice: 'jit'",
    ),
    (
        "compare-out-a-file",
        ["compare", "--problems", "bernoulli-toy", "--smoke", "--out", "{tmp}/afile"],
        r"`--out` must be a folder",
    ),
    (
        "compare-user-problem-bad",
        ["compare", "--problem", "nomodule", "--smoke"],
        r"`--problem` must be 'module:function'; got 'nomodule'",
    ),
    (
        "plot-missing-dir",
        ["plot", "{tmp}/nothing-here"],
        r"`DIR` must hold a results.csv; .*nothing-here/results.csv does not exist",
    ),
]


@pytest.mark.parametrize("argv,match", [pytest.param(a, m, id=i) for i, a, m in CLI_CASES])
def test_bad_cli_input(argv, match, tmp_path, capsys):
    from scg.studies.cli import main

    (tmp_path / "afile").write_text("x")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert re.search(match, errors[0]), errors[0]


def test_an_oversized_exact_grid_is_refused_at_once_with_a_readable_size():
    """RELAX at S = 2000 (4000 uniforms): refused in O(variables), its size written as a power of ten."""
    import time

    p = (torch.tensor(0.3, dtype=torch.float64),)
    start = time.process_time()
    with pytest.raises(ValueError, match=r"the exact grid needs about 10\^\d+\.\d points > `max_points` = "):
        scg.testing.exact_moments(
            scg.RELAX(),
            lambda l: torch.distributions.Bernoulli(logits=l),
            p,
            lambda b: (b - 0.45) ** 2,
            num_samples=2000,
        )
    assert time.process_time() - start < 10.0
