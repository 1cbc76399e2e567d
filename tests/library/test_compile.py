"""``torch.compile``: training steps compile, do not recompile after warm-up, and match eager.

Every estimator's ``scg.expectation`` step compiles with ``fullgraph=True`` (no graph
break): forward compiled, backward through AOT autograd, the optimiser step eager.
``scg.Graph`` reads data flow from autograd's graph of the step (Python introspection of
``grad_fn`` nodes, which Dynamo cannot trace): its step compiles without ``fullgraph``,
the model's tensor code in compiled regions between the breaks, again without
recompiling after warm-up. Values and gradients are compared with eager on the same seed
(``backend="aot_eager"`` keeps the suite fast and draws the same random numbers as eager;
one test uses the default inductor backend, with ``fallback_random`` for eager's numbers).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch.distributions import Bernoulli, Independent, Normal

import scg
from scg.baselines import Delta, Learned, LeaveOneOut, MovingAverage, Normalize, chain

pytestmark = pytest.mark.usefixtures("one_thread_module")

B, D, S, STEPS = 3, 2, 4, 3

#: name -> (estimator factory, distribution family)
ESTIMATORS: dict[str, tuple[Callable[[], scg.Estimator], str]] = {
    "pathwise": (scg.Pathwise, "normal"),
    "score_function": (scg.ScoreFunction, "bernoulli"),
    "moving_average": (lambda: scg.ScoreFunction(MovingAverage()), "bernoulli"),
    "leave_one_out": (lambda: scg.ScoreFunction(LeaveOneOut()), "bernoulli"),
    "nvil": (
        lambda: scg.ScoreFunction(chain(MovingAverage(), Learned(nn.Linear(D, 1)), Normalize())),
        "bernoulli",
    ),
    "nvil_default_features": (
        lambda: scg.ScoreFunction(chain(MovingAverage(), Learned(nn.Linear(D, 1)))),
        "bernoulli",
    ),
    "delta": (lambda: scg.ScoreFunction(Delta()), "normal"),
    "measure_valued": (scg.MeasureValued, "normal"),
    "disarm": (scg.DisARM, "bernoulli"),
    "relax": (scg.RELAX, "bernoulli"),
}


class Problem(nn.Module):
    """A distribution with parameters ``theta`` and a cost with its own parameter ``w``."""

    def __init__(self, family: str, estimator: scg.Estimator, context: bool) -> None:
        super().__init__()
        self.family = family
        self.theta = nn.Parameter(torch.linspace(-0.5, 0.5, B * D).reshape(B, D))
        self.w = nn.Parameter(torch.tensor(0.7))
        self.estimator = estimator
        self.context = context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.family == "normal":
            q = Independent(Normal(self.theta, F.softplus(self.theta) + 0.5), 1)
        else:
            q = Independent(Bernoulli(logits=self.theta), 1)

        def cost(z: torch.Tensor) -> torch.Tensor:
            return (self.w * (z - x) ** 2).sum(-1) + torch.sin(z).sum(-1)

        context = x if self.context else None
        return scg.expectation(cost, q, self.estimator, num_samples=S, context=context).sum()


def _train(model: nn.Module, step: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, seed: int = 0):
    """``STEPS`` steps of forward, backward and SGD; the losses, gradients and final state."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses, grads = [], []
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=False)
        loss = step(x)
        loss.backward()
        losses.append(loss.detach().clone())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        opt.step()
    return losses, grads, {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same(eager, compiled) -> None:
    (le, ge, se), (lc, gc, sc) = eager, compiled
    torch.testing.assert_close(torch.stack(lc), torch.stack(le), rtol=1e-5, atol=1e-6)
    for a, b in zip(gc, ge, strict=False):
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=f"gradient of {name}")
    assert sc.keys() == se.keys()
    for name in sc:
        torch.testing.assert_close(sc[name], se[name], rtol=1e-5, atol=1e-6, msg=f"state {name}")


def _problem(name: str) -> Problem:
    factory, family = ESTIMATORS[name]
    torch.manual_seed(1)  # the learned baselines' initial weights
    return Problem(family, factory(), context=name == "nvil")


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_expectation_step_compiles_fullgraph_without_recompiling_and_matches_eager(name):
    torch._dynamo.reset()
    eager_model = _problem(name)
    compiled_model = copy.deepcopy(eager_model)
    x = torch.linspace(0.0, 1.0, B * D).reshape(B, D)
    eager = _train(eager_model, eager_model, x)
    counter = CompileCounterWithBackend("aot_eager")
    step = torch.compile(compiled_model, fullgraph=True, backend=counter)
    compiled = _train(compiled_model, step, x)
    assert counter.frame_count == 1, f"{name}: {counter.frame_count} compilations in {STEPS} steps"
    _assert_same(eager, compiled)
    grads = compiled[1][-1]
    assert {"theta", "w"} <= grads.keys()  # the distribution's and the cost's parameters


def test_running_state_advances_under_compile_without_recompiling():
    """The step counter is a buffer updated in place: no Python number changes per step."""
    torch._dynamo.reset()
    model = _problem("nvil")
    counter = CompileCounterWithBackend("aot_eager")
    step = torch.compile(model, fullgraph=True, backend=counter)
    x = torch.zeros(B, D)
    for _ in range(5):
        step(x).backward()
    ma, _, norm = model.estimator.baseline.transforms
    assert int(ma.steps) == 5 and int(norm.steps) == 5 and counter.frame_count == 1


def test_eval_mode_compiles_once_more_and_freezes_state():
    torch._dynamo.reset()
    model = _problem("moving_average")
    counter = CompileCounterWithBackend("aot_eager")
    step = torch.compile(model, fullgraph=True, backend=counter)
    x = torch.zeros(B, D)
    step(x).backward()
    model.eval()
    for _ in range(3):
        step(x).backward()
    assert int(model.estimator.baseline.steps) == 1 and counter.frame_count == 2


# A graph: a ~ Bernoulli (score function) -> z ~ Normal (pathwise) -> b ~ Bernoulli (score function).


class GraphModel(nn.Module):
    """A three-node graph (score function → pathwise → score function) with two costs.

    ``dataflow="declared"`` names every dependency (the same ones the traced walk finds).
    """

    def __init__(self, dataflow: str = "traced") -> None:
        super().__init__()
        self.dataflow = dataflow
        torch.manual_seed(2)
        self.enc = nn.Linear(4, 3)
        self.w_z = nn.Linear(3, 3)
        self.w_b = nn.Linear(3, 4)
        self.dec = nn.Linear(4, 4)
        self.sf_a = scg.ScoreFunction(LeaveOneOut())
        self.sf_b = scg.ScoreFunction(MovingAverage())
        self.pathwise = scg.Pathwise()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        declared = self.dataflow == "declared"

        def on(*names: str) -> list[str] | None:
            return list(names) if declared else None

        g = scg.Graph(num_samples=S, dataflow=self.dataflow)
        a = g.sample("a", Independent(Bernoulli(logits=self.enc(x)), 1), self.sf_a)
        z = g.sample("z", Independent(Normal(self.w_z(a), 1.0), 1), self.pathwise, depends_on=on("a"))
        b = g.sample("b", Independent(Bernoulli(logits=self.w_b(z)), 1), self.sf_b, depends_on=on("z"))
        g.cost("fit", ((z - 0.5) ** 2).sum(-1), depends_on=on("z"))
        g.cost(
            "rec",
            F.binary_cross_entropy_with_logits(self.dec(b), x.expand_as(b), reduction="none").sum(-1),
            depends_on=on("b"),
        )
        if not declared:
            assert g.dependencies() == {"fit": ("a", "z"), "rec": ("a", "z", "b")}
        return g.surrogate()


def test_graph_step_compiles_with_breaks_without_recompiling_and_matches_eager():
    torch._dynamo.reset()
    eager_model = GraphModel()
    compiled_model = copy.deepcopy(eager_model)
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    eager = _train(eager_model, eager_model, x)
    counter = CompileCounterWithBackend("aot_eager")
    step = torch.compile(compiled_model, backend=counter)
    compiled = _train(compiled_model, step, x)
    warm = counter.frame_count
    assert warm >= 1 and counter.op_count > 0  # the model's tensor code runs compiled
    _train(compiled_model, step, x, seed=1)
    assert counter.frame_count == warm, "the graph's step recompiled after warm-up"
    _assert_same(eager, compiled)


def test_declared_graph_step_compiles_fullgraph_without_recompiling_and_matches_traced_eager():
    """With ``dataflow="declared"`` nothing is introspected: one graph, no break, no recompilation,
    and the same losses, gradients and baseline state as the traced graph in eager mode."""
    torch._dynamo.reset()
    traced = GraphModel()
    declared = GraphModel("declared")
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    eager = _train(traced, traced, x)
    counter = CompileCounterWithBackend("aot_eager")
    step = torch.compile(declared, backend=counter, fullgraph=True)
    compiled = _train(declared, step, x)
    assert counter.frame_count == 1  # one frame: the whole step, graph included
    _train(declared, step, x, seed=1)
    assert counter.frame_count == 1, "the declared graph's step recompiled after warm-up"
    _assert_same(eager, compiled)


def test_graph_step_is_not_fullgraph_the_data_flow_walk_breaks():
    """Documented limit (docs/gpu.md): the walk over autograd's nodes is Python introspection."""
    torch._dynamo.reset()
    model = GraphModel()
    step = torch.compile(model, fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="grad_fn|functorch|Unsupported|skipped"):
        step(torch.zeros(2, 4))


def test_non_finite_cost_fails_in_compiled_code_with_the_eager_message():
    torch._dynamo.reset()
    theta = torch.zeros(B, D, requires_grad=True)

    def step(shift: torch.Tensor) -> torch.Tensor:
        q = Independent(Normal(theta, 1.0), 1)
        return scg.expectation(lambda z: (z.sum(-1) + shift).log(), q, scg.Pathwise(), num_samples=S).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    assert torch.isfinite(compiled(torch.tensor(100.0)))
    with pytest.raises(RuntimeError, match=r"`f` must return finite costs; got non-finite values"):
        compiled(torch.tensor(-100.0))
    with pytest.raises(ValueError, match=r"`f` must return finite costs; got non-finite values"):
        step(torch.tensor(-100.0))  # eager on the CPU: the ValueError, as before


def test_non_finite_graph_surrogate_fails_in_compiled_code():
    torch._dynamo.reset()
    theta = torch.zeros(3, requires_grad=True)

    def step(shift: torch.Tensor) -> torch.Tensor:
        g = scg.Graph(num_samples=S)
        z = g.sample("z", Normal(theta, 1.0))
        g.cost("f", (z + shift).log())
        return g.surrogate()

    compiled = torch.compile(step, backend="aot_eager")
    assert torch.isfinite(compiled(torch.tensor(100.0)))
    with pytest.raises(RuntimeError, match=r"the surrogate must be finite; got inf or nan"):
        compiled(torch.tensor(-100.0))


def test_input_errors_keep_their_message_under_compile():
    """Shape and type checks run while tracing; Dynamo reports the ValueError's message (fullgraph) or raises it."""
    torch._dynamo.reset()
    theta = torch.zeros(3, requires_grad=True)

    def step() -> torch.Tensor:
        return scg.expectation(lambda z: z.sum(), Normal(theta, 1.0), scg.Pathwise(), num_samples=S)

    match = r"`f` must map samples \[S, \*batch_shape, \*event_shape\] to costs"
    with pytest.raises(Exception, match=match):
        torch.compile(step, fullgraph=True, backend="aot_eager")()
    torch._dynamo.reset()
    with pytest.raises(ValueError, match=match):
        torch.compile(step, backend="aot_eager")()


@pytest.mark.slow
def test_inductor_step_matches_eager():
    """The default backend (inductor), on a step with a learned and a running control variate."""
    torch._dynamo.reset()
    eager_model = _problem("nvil")
    compiled_model = copy.deepcopy(eager_model)
    x = torch.linspace(0.0, 1.0, B * D).reshape(B, D)
    eager = _train(eager_model, eager_model, x)
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fallback_random=True):  # eager's random numbers, for the comparison
        step = torch.compile(compiled_model, fullgraph=True)
        compiled = _train(compiled_model, step, x)
    _assert_same(eager, compiled)


@pytest.mark.cuda
@pytest.mark.cuda
def test_cuda_compiled_step_has_no_host_sync():  # pragma: no cover - no GPU on CI
    """On a GPU the compiled step (finiteness check included) runs without synchronising the host."""
    torch._dynamo.reset()
    model = _problem("nvil").cuda()
    step = torch.compile(model, fullgraph=True)
    x = torch.zeros(B, D, device="cuda")
    step(x).backward()  # warm-up
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step(x).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
