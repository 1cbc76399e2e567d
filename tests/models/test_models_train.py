"""Trainer: exact resume, no redone epochs, early stopping, best restore, devices, smoke runs of every model."""

import dataclasses
import json

import pytest
import torch

import scg
from scg.models import (
    IWAE,
    VAE,
    BernoulliDecoder,
    FlowPosterior,
    GaussianEncoder,
    TrainConfig,
    active_units,
    fit,
    flow_layers,
    log_likelihood,
    resolve_device,
)
from scg.models.data import binarize

pytestmark = pytest.mark.usefixtures("one_thread_module")  # tests/conftest.py


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(60, 8, generator=g), torch.rand(20, 8, generator=g)


def _model(flow: bool = True):
    torch.manual_seed(0)
    enc = GaussianEncoder(8, 2, (6,))
    est = scg.ScoreFunction(
        baseline=scg.baselines.MovingAverage()
    )  # stateful estimator: must be checkpointed
    q = FlowPosterior(enc, flow_layers("iaf", 2, 1, hidden=(4,))) if flow else enc
    return VAE(q, BernoulliDecoder(2, 8, (6,)), estimator=est, kl="mc", warmup=10)


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    train, val = _data()
    cfg = TrainConfig(epochs=4, batch_size=16, seed=3, progress=False)
    a = _model()
    ha = fit(a, train, val, config=cfg, out_dir=tmp_path / "a", transform=binarize)
    b = _model()
    hb1 = fit(b, train, val, config=cfg, out_dir=tmp_path / "b", transform=binarize, stop_after=2)
    assert len(hb1.epochs) == 2
    c = _model()  # a fresh process would rebuild the model from scratch
    hb = fit(c, train, val, config=cfg, out_dir=tmp_path / "b", transform=binarize)
    sa, sc = _state(a), _state(c)
    assert sa.keys() == sc.keys() and "estimator.baseline.value" in sa
    for k in sa:
        assert torch.equal(sa[k], sc[k]), k
    assert [e["epoch"] for e in hb.epochs] == [1, 2, 3, 4]
    assert hb.val_bound == ha.val_bound and hb.train_loss == ha.train_loss
    # Finished epochs are not redone: a third call changes nothing.
    again = fit(c, train, val, config=cfg, out_dir=tmp_path / "b", transform=binarize)
    assert len(again.epochs) == 4
    for k in sa:
        assert torch.equal(sa[k], c.state_dict()[k])
    files = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert files == ["best.pt", "history.json", "last.pt"]  # written atomically: no .tmp left over
    assert len(json.loads((tmp_path / "b" / "history.json").read_text())["epochs"]) == 4


def test_early_stopping_and_restore_best(tmp_path):
    train, val = _data()
    m = _model()
    # lr so large that the validation bound soon stops improving
    cfg = TrainConfig(epochs=30, batch_size=60, lr=0.5, patience=2, restore_best=True, progress=False)
    h = fit(m, train, val, config=cfg, out_dir=tmp_path)
    assert h.stopped_early and len(h.epochs) < 30
    assert len(h.epochs) - h.best_epoch == 2
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    for k, v in m.state_dict().items():
        assert torch.equal(v, best[k])
    # Resuming a stopped run does nothing more.
    assert len(fit(m, train, val, config=cfg, out_dir=tmp_path).epochs) == len(h.epochs)


def test_restore_best_without_checkpoints_and_no_validation():
    train, val = _data()
    m = _model()
    h = fit(
        m,
        train,
        val,
        config=TrainConfig(epochs=2, batch_size=30, restore_best=True, progress=False),
    )
    assert h.best_epoch in (1, 2)
    h2 = fit(_model(), train, None, config=TrainConfig(epochs=1, batch_size=30, progress=True))
    assert h2.best_epoch == -1 and len(h2.epochs) == 1


def test_resolve_device_and_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad in ("tpu", "cudax", "cuda:x"):
        with pytest.raises(
            ValueError, match=f'`device` must be "auto", "cpu", "cuda" or "cuda:N"; got \'{bad}\''
        ):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="`epochs` must be"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="`patience` must be"):
        TrainConfig(patience=0)


@pytest.mark.parametrize(
    "kind,length", [(None, 0), ("planar", 2), ("radial", 2), ("iaf", 2), ("coupling", 2)]
)
@pytest.mark.parametrize("gradient", [None, "dreg"])
def test_smoke_vae_iwae_flows_on_tiny_digits(kind, length, gradient):
    from scg.models.data import digits

    d = digits()
    torch.manual_seed(0)
    enc = GaussianEncoder(64, 3, (8,))
    q = (
        FlowPosterior(enc, flow_layers(kind, 3, length, context_dim=enc.feature_dim, hidden=(8,)))
        if kind
        else enc
    )
    dec = BernoulliDecoder(3, 64, (8,))
    m = (
        IWAE(q, dec, num_samples=3, gradient=gradient)
        if gradient
        else VAE(q, dec, kl="mc" if kind else "analytic")
    )
    h = fit(m, d.train[:100], d.val[:50], config=TrainConfig(epochs=1, batch_size=50, progress=False))
    assert torch.isfinite(torch.tensor(h.val_bound)).all()
    ll = log_likelihood(m, d.test[:10], num_samples=20, chunk_size=8)
    assert ll.shape == (10,) and torch.isfinite(ll).all()
    assert 0 <= active_units(q, d.test[:10])[0] <= 3


_KILLABLE = r"""
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_models_train import _data, _model
from scg.models import fit, TrainConfig
from scg.models.data import binarize
train, val = _data()
fit(_model(flow=False), train, val, config=TrainConfig(epochs={epochs}, batch_size=16, seed=3, progress=False),
    out_dir={out!r}, transform=binarize)
"""


def test_killed_process_resumes_to_the_uninterrupted_result(tmp_path):
    import subprocess
    import sys
    import time
    from pathlib import Path

    epochs = 25
    out = tmp_path / "killed"
    code = _KILLABLE.format(tests=str(Path(__file__).parent), epochs=epochs, out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            h = out / "history.json"
            if h.exists() and len(json.loads(h.read_text())["epochs"]) >= 2:
                break
            time.sleep(0.05)
    finally:
        proc.kill()  # SIGKILL: no clean-up in the child
        proc.wait()
    finished = len(torch.load(out / "last.pt", weights_only=False)["history"]["epochs"])
    assert 2 <= finished
    train, val = _data()
    cfg = TrainConfig(epochs=epochs, batch_size=16, seed=3, progress=False)
    resumed = _model(flow=False)
    h = fit(resumed, train, val, config=cfg, out_dir=out, transform=binarize)
    reference = _model(flow=False)
    fit(reference, train, val, config=cfg, transform=binarize)
    assert len(h.epochs) == epochs
    for k, v in reference.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_resume_refuses_a_different_config(tmp_path):
    train, val = _data()
    fit(
        _model(flow=False),
        train,
        val,
        config=TrainConfig(epochs=1, batch_size=30, seed=1, progress=False),
        out_dir=tmp_path,
    )
    with pytest.raises(ValueError, match=r"`config.seed` must match the checkpoint in .* \(1\); got 2"):
        fit(
            _model(flow=False),
            train,
            val,
            config=TrainConfig(epochs=2, batch_size=30, seed=2, progress=False),
            out_dir=tmp_path,
        )


class _Payload:
    """A pickled object whose unpickling would create a file: the marker of code execution."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_a_checkpoint_with_a_pickled_payload_is_refused_without_running_it(tmp_path, name):
    train, val = _data()
    cfg = TrainConfig(epochs=2, batch_size=16, seed=3, progress=False, restore_best=True)
    fit(_model(), train, val, config=cfg, out_dir=tmp_path / "run")  # a finished run with both files
    marker = tmp_path / "payload-ran"
    torch.save({"model": _Payload(marker)}, tmp_path / "run" / name)
    with pytest.raises(
        ValueError,
        match=rf"holds .*{name}, which is not a checkpoint .* weights_only=True.*it was not run",
    ):
        fit(_model(), train, val, config=cfg, out_dir=tmp_path / "run")
    assert not marker.exists()


def _vae_with_decay(decay: float):
    torch.manual_seed(0)
    enc = GaussianEncoder(8, 2, (6,))
    est = scg.ScoreFunction(baseline=scg.baselines.MovingAverage(decay))
    return VAE(enc, BernoulliDecoder(2, 8, (6,)), estimator=est, kl="mc", warmup=10)


def test_resume_refuses_changed_settings_estimators_data_and_corrupted_checkpoints(tmp_path):
    """Each change that would change the result is refused with a message naming it; so are flipped bits."""
    train, val = _data()
    cfg = TrainConfig(epochs=3, batch_size=30, seed=1, progress=False)
    fit(_vae_with_decay(0.9), train, val, config=cfg, out_dir=tmp_path, stop_after=1)
    with pytest.raises(
        ValueError, match=r"`config.val_samples` must match the checkpoint in .* \(1\); got 5"
    ):
        fit(
            _vae_with_decay(0.9),
            train,
            val,
            config=dataclasses.replace(cfg, val_samples=5),
            out_dir=tmp_path,
        )
    with pytest.raises(
        ValueError, match=r"`model` \(its structure or its estimators' settings\) must be the same"
    ):
        fit(_vae_with_decay(0.8), train, val, config=cfg, out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"`train` \(the data\) must be the same"):
        fit(_vae_with_decay(0.9), train.flip(0), val, config=cfg, out_dir=tmp_path)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    weight = next(v for k, v in ckpt["model"].items() if k.endswith("weight"))
    bits = weight.view(torch.int32)
    bits.view(-1)[:16] ^= 1  # 16 flipped bits inside one tensor
    torch.save(ckpt, tmp_path / "last.pt")
    with pytest.raises(ValueError, match=r"whose content does not match its hash \(corrupted"):
        fit(_vae_with_decay(0.9), train, val, config=cfg, out_dir=tmp_path)
    h = fit(
        _vae_with_decay(0.9), train, val, config=cfg, out_dir=tmp_path / "fresh"
    )  # the same settings train
    assert len(h.epochs) == 3
