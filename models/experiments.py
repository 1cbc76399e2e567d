r"""Reduced-size experiments behind ``docs/models.md``: ``python -m scg.models.experiments NAME``.

Every experiment trains through :func:`scg.models.fit` with one checkpoint folder
per cell (``--out/NAME/<cell>``), so an interrupted experiment restarts where it
stopped: finished cells are read from their ``result.json``, unfinished runs
resume from ``last.pt``. ``--smoke`` shrinks every size for tests. Sizes are far
below the papers' (8×8 digits instead of MNIST, CPU minutes instead of GPU days);
``docs/models.md`` says so next to each table.

=================== ==========================================================
name                what it shows
=================== ==========================================================
linear-gaussian     linear VAE bound vs exact log p(x); IS (K = 5000) vs closed
                    form; flow posterior vs mean-field gap on a correlated posterior
iwae                Burda et al.'s table on digits: VAE vs IWAE, k = 1/5/50
flows               test log p(x) vs flow type and length (0, 2, 8)
discrete            sigmoid belief net, every estimator at equal f evaluations
blr                 Bayesian logistic regression: ELBO, accuracy, gradient variance
categorical         categorical VAE (D × K one-hot latents), every categorical
                    estimator at equal decoder evaluations
=================== ==========================================================
"""

from __future__ import annotations

import argparse
import sys

import torch

from scg.models.experiments_blr import blr
from scg.models.experiments_categorical import categorical
from scg.models.experiments_digits import discrete, flows, iwae
from scg.models.experiments_linear import linear_gaussian

__all__ = ["main", "EXPERIMENTS"]


EXPERIMENTS = {
    "linear-gaussian": linear_gaussian,
    "iwae": iwae,
    "flows": flows,
    "discrete": discrete,
    "blr": blr,
    "categorical": categorical,
}


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, run the experiment (finished cells are read back) and print its tables."""
    p = argparse.ArgumentParser(prog="python -m scg.models.experiments", description=__doc__.split("\n")[0])
    p.add_argument("name", choices=list(EXPERIMENTS))
    p.add_argument("--out", default="runs/models")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=3, help="seeds for the digits tables")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--patience", type=int, default=30)
    p.add_argument("--arch", choices=["linear", "nonlinear"], default="linear")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--grad-samples", type=int, default=200)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (1 is fastest for these sizes)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for tests")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.lr is None:
        args.lr = {"blr": 1e-3, "discrete": 1e-3}.get(args.name, 1e-3)
    torch.set_num_threads(args.threads)
    try:
        print(EXPERIMENTS[args.name](args))
    except KeyboardInterrupt:
        print(
            f"{args.name}: interrupted; finished cells and checkpoints are kept — run the same command again "
            "to resume.",
            file=sys.stderr,
        )
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
