"""Every model in scg.models, trained briefly on the embedded data: ``python examples/models_quickstart.py``.

``--tiny`` runs the same code at toy sizes (seconds; used by the test suite).
"""

import argparse

import torch

import scg
from scg.models import (
    IWAE,
    VAE,
    BayesianLogisticRegression,
    BernoulliDecoder,
    DiscreteVAE,
    FlowPosterior,
    GaussianEncoder,
    TrainConfig,
    active_units,
    fit,
    flow_layers,
    log_likelihood,
)
from scg.models.data import breast_cancer, digits


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    d = digits()  # binarised 8×8 digits, fixed 1000/350/447 split, no download
    n, epochs, K, hidden = (100, 1, 50, (16,)) if args.tiny else (1000, 30, 1000, (100, 100))
    train, val, test = d.train[:n], d.val, d.test
    cfg = TrainConfig(epochs=epochs, batch_size=100, progress=not args.tiny)

    # 1. Gaussian VAE, Bernoulli decoder, analytic KL, KL warm-up over 200 steps, reparameterisation trick.
    vae = VAE(
        GaussianEncoder(64, 10, hidden),
        BernoulliDecoder(10, 64, hidden),
        estimator=scg.Pathwise(),
        warmup=200,
    )
    fit(vae, train, val, config=cfg, device=args.device)
    print(
        "VAE       test log p(x) ≈",
        round(
            float(log_likelihood(vae, test.to(next(vae.parameters()).device), num_samples=K).mean()),
            2,
        ),
        " active units:",
        active_units(vae.encoder, test.to(next(vae.parameters()).device))[0],
    )

    # 2. The same VAE trained with the score function and a moving-average baseline instead.
    sf = VAE(
        GaussianEncoder(64, 10, hidden),
        BernoulliDecoder(10, 64, hidden),
        estimator=scg.ScoreFunction(baseline=scg.baselines.MovingAverage()),
        num_samples=4,
    )
    fit(sf, train, val, config=cfg, device=args.device)

    # 3. Flow posterior: 2 amortised IAF steps on the encoder's base Normal (Monte Carlo KL).
    enc = GaussianEncoder(64, 10, hidden)
    flow = VAE(
        FlowPosterior(enc, flow_layers("iaf", 10, 2, context_dim=enc.feature_dim)),
        BernoulliDecoder(10, 64, hidden),
        kl="mc",
    )
    fit(flow, train, val, config=cfg, device=args.device)

    # 4. IWAE with K = 5 samples and doubly reparameterised gradients.
    iwae = IWAE(
        GaussianEncoder(64, 10, hidden),
        BernoulliDecoder(10, 64, hidden),
        num_samples=5,
        gradient="dreg",
    )
    fit(iwae, train, val, config=cfg, device=args.device)

    # 5. Sigmoid belief net with binary latents and any estimator for Bernoulli latents; by registry
    #    name: DiscreteVAE.from_name("nvil", 64, 32) (names: scg-study list; "vimco" is an objective).
    sbn = DiscreteVAE(64, 32, estimator=scg.DisARM(), evaluations=6)
    h = fit(sbn, train, val, config=cfg, device=args.device)
    print("SBN (DisARM) validation ELBO per epoch:", [round(v, 2) for v in h.val_bound])

    # 6. Bayesian logistic regression on breast cancer; minibatches of 32 scaled by N/B; any estimator.
    x, y, _, _ = breast_cancer()
    blr = BayesianLogisticRegression(x, y, estimator=scg.MeasureValued(), num_samples=10, batch_size=32)
    opt = torch.optim.SGD(blr.parameters(), lr=1e-3)
    for _ in range(5 if args.tiny else 500):
        opt.zero_grad()
        blr.objective().backward()
        opt.step()
    print("BLR       ELBO ≈", round(blr.elbo(), 2), " accuracy:", round(blr.accuracy(), 3))


if __name__ == "__main__":
    main()
