"""Distributed scg: data-parallel training and sharded studies on torch.distributed (gloo, CPU, loopback).

Two ``torchrun --standalone --nproc_per_node=2`` launches on 127.0.0.1 (120 s
timeout each, so a hang fails instead of blocking), shared by the tests below:

* ``fail``: a sharded toy study in which rank 1 raises in its second cell — the
  launch must fail with a clear message;
* ``main``: resumes that study (only the missing cells may run), runs a fresh
  sharded study, enumerates every ordered global batch of a tiny data set for the
  averaged gradient, samples Monte Carlo gradients, and trains with
  ``fit_distributed`` (against ``fit`` with twice the batch; resume).

This file is also the worker script: ``torchrun ... tests/test_distributed.py MODE DIR``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from statistics import NormalDist

import pytest
import torch
from torch import nn

import scg
from scg.distributed import init_from_env, rank_and_world, rank_seed, sync_buffers
from scg.models import TrainConfig, fit
from scg.models.distributed import DataParallelStep, fit_distributed, local_slice
from scg.studies.base import Study
from scg.studies.runner import cell_path, run_study

TIMEOUT = 120
HUNG_TIMEOUT = 3.0  # seconds the training collectives of the `hung` launch wait
STUDY = "toy-dist"
SEED = 7


# ----------------------------------------------------------------------------- helpers shared with the workers


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    sizes: tuple = (1, 2, 3)
    repeats: int = 2


class ToyDistStudy(Study):
    """Six cells; logs every cell it runs to ``$SCG_TEST_LOG/<rank>.log``; ``$SCG_TEST_FAIL_RANK`` fails cell 2."""

    name = STUDY
    description = "toy study for the distributed tests"
    reproduces = "nothing"
    time = {"smoke": "0 s", "full": "0 s"}
    Config = ToyConfig
    count = 0

    def smoke(self) -> ToyConfig:
        return ToyConfig()

    def cells(self, cfg):
        return [{"size": s, "rep": r} for s in cfg.sizes for r in range(cfg.repeats)]

    def run_cell(self, cfg, cell, ctx):
        rank = int(os.environ.get("RANK", "0"))
        ToyDistStudy.count += 1
        if os.environ.get("SCG_TEST_FAIL_RANK") == str(rank) and ToyDistStudy.count == 2:
            raise RuntimeError("simulated failure in a cell")
        log = os.environ.get("SCG_TEST_LOG")
        if log:
            with open(Path(log) / f"{rank}.log", "a") as fh:
                fh.write(json.dumps(cell, sort_keys=True) + "\n")
        x = torch.randn(cell["size"], generator=ctx.generator)
        return [
            {
                "size": cell["size"],
                "rep": cell["rep"],
                "value": float(x.sum()),
                "g": float(torch.rand(())),
            }
        ]

    def plot(self, rows, cfg, out_dir):
        return []


class Logistic(nn.Module):
    """Deterministic per-datum loss (no Monte Carlo): rows are ``[x (D), y]``; batch-mean BCE."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-0.5, 0.5, dim, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(0.1, dtype=torch.float64))

    def per_datum(self, rows):
        logits = rows[:, :-1] @ self.w + self.b
        return nn.functional.binary_cross_entropy_with_logits(logits, rows[:, -1], reduction="none")

    def loss(self, rows, *, step=0):
        return self.per_datum(rows).mean()

    def bound(self, rows, *, num_samples=1):
        return -self.per_datum(rows)


class BernoulliLatent(nn.Module):
    r"""Per datum :math:`E_{z∼\mathrm{Bern}(σ(θ^\top x))}[(z − y)^2]` by the score function with a moving average."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.linspace(-1.0, 1.0, dim, dtype=torch.float64))
        self.estimator = scg.ScoreFunction(baseline=scg.baselines.MovingAverage(0.9))

    def loss(self, rows, *, step=0):
        q = torch.distributions.Bernoulli(logits=rows[:, :-1] @ self.theta)
        return scg.expectation(lambda z: (z - rows[:, -1]) ** 2, q, self.estimator).mean()

    def exact(self, rows):
        p = torch.sigmoid(rows[:, :-1] @ self.theta)
        y = rows[:, -1]
        return (p * (1 - y) ** 2 + (1 - p) * y**2).mean()


def _rows(n: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    y = (torch.rand(n, generator=g) < 0.5).double()
    return torch.cat([x, y[:, None]], 1)


def _flat_grad(m: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in m.parameters() if p.grad is not None])


def _small_vae():
    from scg.models import VAE, BernoulliDecoder, GaussianEncoder

    torch.manual_seed(0)
    est = scg.ScoreFunction(baseline=scg.baselines.MovingAverage())  # running state: synced across ranks
    return VAE(GaussianEncoder(8, 2, (6,)), BernoulliDecoder(2, 8, (6,)), estimator=est)


FIT_DATA = dict(n=21, dim=3, seed=1)
FIT_CFG = dict(epochs=3, lr=0.05, seed=0, progress=False)


# ----------------------------------------------------------------------------- worker (runs under torchrun)


def _run_study(out: Path, log: Path) -> None:
    from scg.studies import registry
    from scg.studies.cli import main

    registry.STUDIES[STUDY] = "test_distributed:ToyDistStudy"
    log.mkdir(parents=True, exist_ok=True)
    os.environ["SCG_TEST_LOG"] = str(log)
    code = main(["run", STUDY, "--out", str(out), "-q", "--device", "cpu", "--seed", str(SEED)])
    if code != 0:
        raise SystemExit(code)


def _exact_over_subsets(rank: int, world: int) -> dict:
    data, n = _rows(4, 2, seed=3), 3
    model = Logistic(2)
    ref = copy.deepcopy(model)
    ref.loss(data).backward()
    full = _flat_grad(ref)
    stepper = DataParallelStep(model)
    grads, dev_batch = [], 0.0
    for order in itertools.permutations(range(4), n):  # every ordered global batch is equally likely
        idx = torch.tensor(order)
        model.zero_grad()
        stepper.backward(data[idx[local_slice(n, rank, world)]], total=n)
        ref.zero_grad()
        ref.loss(data[idx]).backward()  # one process, the whole global batch
        grads.append(_flat_grad(model))
        dev_batch = max(dev_batch, float((grads[-1] - _flat_grad(ref)).abs().max()))
    mean = torch.stack(grads).mean(0)
    return {
        "configs": len(grads),
        "mean": mean.tolist(),
        "full": full.tolist(),
        "dev_batch": dev_batch,
    }


def _sampled(rank: int, world: int, steps: int = 200) -> dict:
    data, n = _rows(8, 3, seed=4), 4
    model = BernoulliLatent(3)
    exact = torch.autograd.grad(model.exact(data), model.theta)[0]
    stepper = DataParallelStep(model)
    order = torch.Generator().manual_seed(0)  # the same global batches on every rank
    torch.manual_seed(rank_seed(0, rank))  # independent Monte Carlo draws per rank
    first = torch.rand(4)
    grads, before = [], None
    for t in range(steps):
        idx = torch.randperm(8, generator=order)[:n]
        model.zero_grad()
        stepper.backward(data[idx[local_slice(n, rank, world)]], total=n)
        grads.append(model.theta.grad.clone())
        if t == steps - 1:
            before = model.estimator.baseline.value.clone()
        stepper.sync()
    g = torch.stack(grads)
    gathered = [torch.zeros(4) for _ in range(world)]
    torch.distributed.all_gather(gathered, first)
    nums = [torch.zeros((), dtype=before.dtype) for _ in range(world)]
    torch.distributed.all_gather(nums, before)
    after = [torch.zeros((), dtype=before.dtype) for _ in range(world)]
    torch.distributed.all_gather(after, model.estimator.baseline.value.clone())
    return {
        "mean": g.mean(0).tolist(),
        "se": (g.std(0) / math.sqrt(steps)).tolist(),
        "exact": exact.tolist(),
        "steps": steps,
        "draws_differ": not torch.equal(gathered[0], gathered[1]),
        "buffers_before": [float(v) for v in nums],
        "buffers_after": [float(v) for v in after],
    }


def _fit_runs(tmp: Path, rank: int, world: int) -> dict:
    data = _rows(**FIT_DATA)
    model = Logistic(FIT_DATA["dim"])
    hist = fit_distributed(model, data, data[:5], config=TrainConfig(batch_size=3, **FIT_CFG))
    if rank == 0:
        torch.save(
            {"state": model.state_dict(), "train_loss": hist.train_loss, "val": hist.val_bound},
            tmp / "fit2.pt",
        )
    x = torch.bernoulli(
        torch.full((40, 8), 0.4, dtype=torch.float32), generator=torch.Generator().manual_seed(5)
    )
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-2, seed=2, progress=False)
    a = _small_vae()
    fit_distributed(a, x, x[:10], config=cfg, out_dir=tmp / "vae-a")
    b = _small_vae()
    fit_distributed(b, x, x[:10], config=cfg, out_dir=tmp / "vae-b", stop_after=1)
    b = _small_vae()  # a restarted process rebuilds the model from scratch
    hb = fit_distributed(b, x, x[:10], config=cfg, out_dir=tmp / "vae-b")
    sa, sb = a.state_dict(), b.state_dict()
    states = [None] * world
    torch.distributed.all_gather_object(states, {k: v.clone() for k, v in sb.items()})
    return {
        "resume_equal": all(torch.equal(sa[k], sb[k]) for k in sa),
        "epochs": len(hb.epochs),
        "ranks_equal": all(torch.equal(states[0][k], s[k]) for s in states for k in sa),
        "has_buffer": "estimator.baseline.value" in sa,
    }


def _hung_rank(tmp: Path) -> int:
    batches = []

    def transform(x: torch.Tensor) -> torch.Tensor:
        batches.append(1)
        if len(batches) == 2 and int(os.environ["RANK"]) == 1:
            time.sleep(600)  # stops responding: rank 0 waits at the gradient all-reduce
        return x

    x = torch.bernoulli(torch.full((40, 8), 0.4), generator=torch.Generator().manual_seed(5))
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-2, seed=2, progress=False)
    fit_distributed(_small_vae(), x, config=cfg, transform=transform, timeout=HUNG_TIMEOUT)
    return 0


def _worker(mode: str, tmp: Path) -> int:
    if mode == "fail":
        os.environ["SCG_TEST_FAIL_RANK"] = "1"
        _run_study(tmp / "resumed", tmp / "log-fail")
        return 0
    if mode == "study":  # the sharded study alone (for repeated launches: docs/distributed.md)
        _run_study(tmp / "sharded", tmp / "log-sharded")
        return 0
    if mode == "train":  # data-parallel training alone (for repeated launches: docs/distributed.md)
        init_from_env(backend="gloo")
        _fit_runs(tmp, *rank_and_world())
        return 0
    if mode == "hung":  # rank 1 stops responding in its second batch; rank 0 must time out
        return _hung_rank(tmp)
    if mode == "orphan":  # both ranks wait; the test kills torchrun itself
        init_from_env(backend="gloo")
        (tmp / f"pid-{rank_and_world()[0]}").write_text(str(os.getpid()))
        for _ in range(1200):
            (tmp / f"alive-{rank_and_world()[0]}").write_text("1")
            time.sleep(0.1)
        return 0
    _run_study(tmp / "resumed", tmp / "log-resume")
    _run_study(tmp / "sharded", tmp / "log-sharded")
    rank, world = rank_and_world()
    result = {
        "exact": _exact_over_subsets(rank, world),
        "sampled": _sampled(rank, world),
        "fit": _fit_runs(tmp, rank, world),
        "world": world,
    }
    if rank == 0:
        (tmp / "result.json").write_text(json.dumps(result))
    return 0


# ----------------------------------------------------------------------------- launches


def _launch(mode: str, tmp: Path) -> subprocess.CompletedProcess:
    proc = _start(mode, tmp)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun {mode} did not finish within {TIMEOUT} s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def _start(mode: str, tmp: Path) -> subprocess.Popen:
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [
        str(torchrun),
        "--standalone",
        "--local-addr",
        "127.0.0.1",
        "--nproc_per_node=2",
        "--monitor-interval",
        "0.1",
        __file__,
        mode,
        str(tmp),
    ]
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    fail = _launch("fail", tmp)
    left = sorted(p.name for p in (tmp / "resumed" / "cells").glob("*.json"))
    csv_after_fail = (tmp / "resumed" / "results.csv").exists()
    main = _launch("main", tmp)
    assert main.returncode == 0, main.stdout[-6000:]
    return {
        "tmp": tmp,
        "reference": _reference_csv(tmp),
        "fail": fail,
        "left": left,
        "csv_after_fail": csv_after_fail,
        "result": json.loads((tmp / "result.json").read_text()),
    }


def _reference_csv(tmp: Path) -> str:
    res = run_study(ToyDistStudy(), ToyConfig(), tmp / "single", seed=SEED, device="cpu", progress=False)
    assert len(res.ran) == 6
    return (tmp / "single" / "results.csv").read_text()


def _logged(folder: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(folder.glob("*.log")) for line in p.read_text().splitlines()]


# ----------------------------------------------------------------------------- tests on the launches


def test_a_dead_rank_fails_the_launch_with_a_clear_message(launched):
    fail = launched["fail"]
    assert fail.returncode != 0
    assert "scg-study: rank 1 of 2 failed: RuntimeError: simulated failure in a cell" in fail.stdout
    assert "re-running the same command redoes only the missing cells" in fail.stdout
    summary = fail.stdout[fail.stdout.find("Root Cause") :]
    # torchrun names the first failure it observed: usually rank 1, but under heavy load rank 0 can
    # be torn down first; either way the failing rank's message is in the output (asserted above).
    if "rank      : 1 (local_rank: 1)" in summary:
        assert "simulated failure in a cell" in summary  # the traceback reached torchrun's error file
    assert not launched["csv_after_fail"]  # rank 0 never merged: it waited for rank 1 at the barrier
    assert 0 < len(launched["left"]) < 6


def test_resumed_sharded_study_redoes_only_the_missing_cells(launched):
    tmp = launched["tmp"]
    ran = _logged(tmp / "log-resume")
    cells = ToyDistStudy().cells(ToyConfig())
    done_before = set(launched["left"])
    digest = json.loads((tmp / "resumed" / "manifest.json").read_text())["config_hash"]
    missing = [c for i, c in enumerate(cells) if cell_path(tmp, i, c, digest).name not in done_before]
    key = lambda c: json.dumps(c, sort_keys=True)  # noqa: E731
    assert len(missing) >= 2 and sorted(map(key, ran)) == sorted(map(key, missing))
    assert (tmp / "resumed" / "results.csv").read_text() == launched["reference"]


def test_sharded_study_writes_the_single_process_results_csv(launched):
    tmp = launched["tmp"]
    ran = _logged(tmp / "log-sharded")
    assert len(ran) == 6 and len({json.dumps(c) for c in ran}) == 6  # every cell once, over both ranks
    assert {p.name for p in (tmp / "log-sharded").glob("*.log")} == {"0.log", "1.log"}
    assert (tmp / "sharded" / "results.csv").read_text() == launched["reference"]
    man = json.loads((tmp / "sharded" / "manifest.json").read_text())
    assert man["world_size"] == 2


def test_averaged_gradient_is_exactly_unbiased_over_all_global_batches(launched):
    r = launched["result"]["exact"]
    assert r["configs"] == 24  # 4 * 3 * 2 ordered batches of 3 out of 4; ranks get 2 and 1 points
    assert r["dev_batch"] < 1e-12  # each step: exactly the one-process gradient of the global batch
    assert torch.allclose(torch.tensor(r["mean"]), torch.tensor(r["full"]), atol=1e-12, rtol=0)


def test_averaged_monte_carlo_gradient_is_unbiased_and_state_is_synced(launched):
    r = launched["result"]["sampled"]
    # 3 coordinates, false-failure rate 1e-3 overall (Bonferroni), two-sided.
    z = NormalDist().inv_cdf(1 - 1e-3 / (2 * 3))
    for m, se, e in zip(r["mean"], r["se"], r["exact"], strict=False):
        assert abs(m - e) < z * se, (m, e, se)
    assert r["draws_differ"]  # independent per-rank seeds
    assert r["buffers_before"][0] != r["buffers_before"][1]  # ranks saw different data ...
    assert r["buffers_after"][0] == r["buffers_after"][1]  # ... and agree after sync_buffers
    assert math.isclose(r["buffers_after"][0], sum(r["buffers_before"]) / 2, rel_tol=1e-6)


def test_two_ranks_train_like_one_process_with_twice_the_batch(launched):
    saved = torch.load(launched["tmp"] / "fit2.pt", weights_only=False)
    data = _rows(**FIT_DATA)
    model = Logistic(FIT_DATA["dim"])
    hist = fit(model, data, data[:5], config=TrainConfig(batch_size=6, **FIT_CFG))
    for k, v in model.state_dict().items():
        assert torch.allclose(v, saved["state"][k], atol=1e-10, rtol=0), k
    assert torch.allclose(torch.tensor(hist.train_loss), torch.tensor(saved["train_loss"]), atol=1e-10)
    assert torch.allclose(torch.tensor(hist.val_bound), torch.tensor(saved["val"]), atol=1e-10)


def test_distributed_resume_reproduces_the_uninterrupted_run(launched):
    r = launched["result"]["fit"]
    assert r["has_buffer"] and r["resume_equal"] and r["ranks_equal"] and r["epochs"] == 3


def test_a_rank_that_stops_responding_fails_training_after_the_timeout(tmp_path):
    """``fit_distributed(timeout=3)``: rank 0 gives up on the hung rank 1 within seconds, not torch's
    default 30 minutes, and the launch fails."""
    start = time.monotonic()
    res = _launch("hung", tmp_path)
    elapsed = time.monotonic() - start
    assert res.returncode != 0, res.stdout[-3000:]
    assert elapsed < 60, f"took {elapsed:.0f} s:\n{res.stdout[-3000:]}"


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # exited (a zombie waiting to be reaped counts as gone)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_ranks_exit_when_torchrun_is_killed(tmp_path):
    proc = _start("orphan", tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"alive-{r}").exists() for r in (0, 1)):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.1)
        pids = [int((tmp_path / f"pid-{r}").read_text()) for r in (0, 1)]
        os.kill(proc.pid, signal.SIGKILL)  # the launcher alone: its ranks are not told
        proc.wait()
        deadline = time.monotonic() + 10
        while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(_gone(p) for p in pids), "ranks outlived their launcher"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the session
        proc.communicate()


# ----------------------------------------------------------------------------- in-process tests


def test_one_process_fit_distributed_is_fit():
    x = torch.bernoulli(torch.full((30, 8), 0.4), generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(epochs=2, batch_size=7, lr=1e-2, seed=4, progress=False)
    a, b = _small_vae(), _small_vae()
    ha = fit(a, x, x[:9], config=cfg)
    hb = fit_distributed(b, x, x[:9], config=cfg)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert ha.train_loss == hb.train_loss and ha.val_bound == hb.val_bound


def test_resume_with_another_world_size_is_refused(tmp_path):
    x = torch.bernoulli(torch.full((12, 8), 0.4), generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(epochs=2, batch_size=4, progress=False)
    fit_distributed(_small_vae(), x, config=cfg, out_dir=tmp_path, stop_after=1)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 1 and len(ckpt["rank_rng"]) == 1
    content = {k: v for k, v in ckpt.items() if k not in ("fingerprint", "content_hash")}
    content["world_size"], content["rank_rng"] = (
        2,
        content["rank_rng"] * 2,
    )  # as a 2-process run writes it
    from scg.models.checkpoint import _content_hash

    torch.save(
        {**content, "fingerprint": ckpt["fingerprint"], "content_hash": _content_hash(content)},
        tmp_path / "last.pt",
    )
    with pytest.raises(
        ValueError, match=r"checkpoint of a 2-process run; resume it with 2 processes .* got 1"
    ):
        fit_distributed(_small_vae(), x, config=cfg, out_dir=tmp_path)


def test_local_slice_partitions_and_errors():
    for n in range(0, 9):
        for world in (1, 2, 3):
            parts = [local_slice(n, r, world) for r in range(world)]
            assert [i for p in parts for i in range(n)[p]] == list(range(n))
            assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1
    with pytest.raises(ValueError, match=r"`rank` must be in \[0, world\)"):
        local_slice(4, 2, 2)
    with pytest.raises(ValueError, match="`n` must be >= 0"):
        local_slice(-1, 0, 1)


def test_step_errors_and_empty_part():
    with pytest.raises(TypeError, match="`model` must have a loss"):
        DataParallelStep(nn.Linear(2, 2))
    model = Logistic(2)
    step = DataParallelStep(model)
    with pytest.raises(ValueError, match="`total` must be >= the local batch size 3"):
        step.backward(_rows(3, 2, 0), total=2)
    loss = step.backward(_rows(3, 2, 0)[:0], total=2)  # fewer points than ranks: zero contribution
    assert math.isnan(float(loss)) and float(_flat_grad(model).abs().max()) == 0.0 and model.training


def test_env_helpers(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    from scg.studies.distributed import barrier, current_shard

    assert current_shard() == (0, 1) and init_from_env() == (0, 1) and rank_and_world() == (0, 1)
    barrier()  # no process group: nothing to wait for
    assert rank_seed(5) == 5 and rank_seed(5, 3) == 8
    with pytest.raises(TypeError, match="`seed` must be an int"):
        rank_seed(1.5)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="`WORLD_SIZE` must be an integer; got 'two'"):
        init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "0")
    with pytest.raises(ValueError, match="`WORLD_SIZE` must be >= 1; got 0"):
        init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="`RANK` must be set when WORLD_SIZE=2; launch with torchrun"):
        init_from_env()
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match=r"`RANK` must be in \[0, 2\); got 2"):
        init_from_env()
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="MASTER_ADDR, MASTER_PORT must be set for a 2-process run"):
        init_from_env()
    monkeypatch.setenv("SCG_DIST_TIMEOUT", "-1")
    with pytest.raises(ValueError, match="`SCG_DIST_TIMEOUT` must be a positive number of seconds; got '-1'"):
        current_shard()


def test_sync_buffers_without_group_and_failure_messages():
    model = BernoulliLatent(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sync_buffers(model)  # one process: unchanged
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(TypeError, match="`module` must be a torch.nn.Module; got int"):
        sync_buffers(3)
    from scg.studies.distributed import failure_message

    msg = failure_message(ValueError("bad cell"), 1, 4)
    assert msg.startswith("scg-study: rank 1 of 4 failed: ValueError: bad cell")
    lost = failure_message(RuntimeError("Connection closed by peer [127.0.0.1]:1"), 0, 2)
    assert "rank 0 of 2 lost contact with another rank" in lost


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1], Path(sys.argv[2])))
