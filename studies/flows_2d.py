r"""``flows-2d`` — planar, radial and affine-coupling flows fitted to the 2-D potentials U1–U4.

Rezende & Mohamed (2015), §6.1 and Fig. 3: a flow :math:`q_K = f_K ∘ … ∘ f_1 \# N(0, I)`
(:mod:`scg.models.flows` transforms in a ``TransformedDistribution``) is fitted to the
unnormalised target :math:`p(z) ∝ e^{−U(z)}` by minimising the reverse KL up to
:math:`\log Z`, with the pathwise (reparameterised) gradient from :func:`scg.expectation`
and the annealed energy of the paper,

.. math::
    \mathcal L_t = E_{q_K}\big[\log q_K(z) + β_t\, U(z)\big], \qquad β_t = \min(1,\; 0.01 + t/T_β)

(:math:`T_β = 10^4` at full size; the CPU default trains fewer steps and anneals over
half of them). U2–U4 have infinite mass on ℝ² (they do not confine z₁), so a flexible
flow leaks mass out of the box along z₁; by default the training energy adds a
quadratic wall outside the box, :math:`U + \sum_i \max(0, |z_i| − 4)^2 / (2 w^2)` with
w = ``wall_width`` = 0.1, which makes the target the box-normalised density
(``--set wall_width=0`` trains on the plain U as the paper does). After training, on a G×G midpoint grid of the box :math:`[−4, 4]^2`:

* ``log_z_box`` :math:`= \log \sum e^{−U} h^2` (U1: 1.877502 on ℝ², exact; the mass
  outside the box is < 1e-7, so this checks the grid);
* ``kl_box`` :math:`= \mathrm{KL}(\bar q ‖ \bar p)`, both densities restricted to the box
  and normalised there (``q_mass_box`` is the flow's mass inside the box; log q on the
  grid comes from the flows' inverses);
* ``free_energy_mc`` :math:`= E_q[\log q + U]` from samples, the paper's objective
  (U1: ``+ log Z`` is the KL to the normalised target; U2–U4 have infinite mass on ℝ²).

The q density on the grid goes into the results as an 8-bit image (zlib + base64,
column ``image``) so that ``scg-study plot`` redraws the figure in the paper's layout.

**Reproducibility.** A cell is seeded from the run seed and its key (potential, kind,
length, ``seed``), never from execution order, and runs with ``threads`` intra-op
threads (default 1, restored afterwards), so ``results.csv`` does not depend on the
machine's core count or on sharding; at one revision it is bit-identical run to run.
Short fits are *chaotic*, though: a relative change of 1e-6 in the initial parameters
of a planar K = 32 flow moves its KL after 400 steps by ~0.8 nats, so any change of
floating-point order (another torch version, a refactoring of the estimator code)
changes single-seed numbers by as much. ``seeds`` > 1 fits each configuration from
that many initialisations; :func:`summary` reports the mean and standard error over
them, which is what a claim should rest on.
"""

from __future__ import annotations

import base64
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Independent, Normal, TransformedDistribution

import scg
from scg.models import flow_layers
from scg.studies.base import CellContext, Study

__all__ = [
    "Flows2DConfig",
    "Flows2D",
    "POTENTIALS",
    "potential",
    "decode_image",
    "grid_points",
    "summary",
    "summary_table",
]

BOX = 4.0
KINDS = ("planar", "radial", "coupling")


def _w1(z1: Tensor) -> Tensor:
    return torch.sin(2 * math.pi * z1 / 4)


def _u1(z: Tensor) -> Tensor:
    z1, r = z[..., 0], z.norm(dim=-1)
    return 0.5 * ((r - 2) / 0.4) ** 2 - torch.logaddexp(
        -0.5 * ((z1 - 2) / 0.6) ** 2, -0.5 * ((z1 + 2) / 0.6) ** 2
    )


def _u2(z: Tensor) -> Tensor:
    return 0.5 * ((z[..., 1] - _w1(z[..., 0])) / 0.4) ** 2


def _u3(z: Tensor) -> Tensor:
    z1, z2 = z[..., 0], z[..., 1]
    w2 = 3 * torch.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
    return -torch.logaddexp(-0.5 * ((z2 - _w1(z1)) / 0.35) ** 2, -0.5 * ((z2 - _w1(z1) + w2) / 0.35) ** 2)


def _u4(z: Tensor) -> Tensor:
    z1, z2 = z[..., 0], z[..., 1]
    w3 = 3 * torch.sigmoid((z1 - 1) / 0.3)
    return -torch.logaddexp(-0.5 * ((z2 - _w1(z1)) / 0.4) ** 2, -0.5 * ((z2 - _w1(z1) + w3) / 0.35) ** 2)


#: The four energy functions of Rezende & Mohamed (2015), Table 1: ``[..., 2] -> [...]``.
POTENTIALS: dict[str, Callable[[Tensor], Tensor]] = {"U1": _u1, "U2": _u2, "U3": _u3, "U4": _u4}
LOG_Z_U1 = 1.877502  # exact, on ℝ² (docs/references.md)


def potential(name: str) -> Callable[[Tensor], Tensor]:
    """The energy U of ``name`` (U1–U4)."""
    if name not in POTENTIALS:
        raise ValueError(f"unknown potential {name!r}; valid potentials: {', '.join(POTENTIALS)}.")
    return POTENTIALS[name]


def grid_points(G: int, dtype: torch.dtype = torch.float64, device: Any = "cpu") -> tuple[Tensor, float]:
    """Midpoints of a G×G grid of [−4, 4]², ``[G*G, 2]`` (row-major: z2 varies slowest), and the spacing h."""
    h = 2 * BOX / G
    c = -BOX + h * (torch.arange(G, dtype=dtype, device=device) + 0.5)
    z2, z1 = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([z1.reshape(-1), z2.reshape(-1)], -1), h


def encode_image(density: np.ndarray) -> str:
    """``[G, G]`` non-negative array → 8-bit image (scaled to its max), zlib-compressed, base64 text."""
    top = float(density.max()) if density.size else 0.0
    img = np.zeros(density.shape, np.uint8) if top <= 0 else np.round(255 * density / top).astype(np.uint8)
    return f"{img.shape[0]}:" + base64.b64encode(zlib.compress(img.tobytes(), 9)).decode("ascii")


def decode_image(text: str) -> np.ndarray:
    """Inverse of :func:`encode_image` (values in [0, 1])."""
    size, data = text.split(":", 1)
    G = int(size)
    return np.frombuffer(zlib.decompress(base64.b64decode(data)), np.uint8).reshape(G, G) / 255.0


@dataclass(frozen=True)
class Flows2DConfig:
    """Configuration; defaults are the CPU size; :meth:`Flows2D.full` the paper-like GPU size
    (20000 steps, :math:`T_β = 10^4`, 512 samples per step, lr 1e-3, a 512×512 grid).

    Attributes:
        potentials: subset of U1–U4.
        kinds: flow families: ``planar``, ``radial``, ``coupling`` (affine coupling, Real NVP).
        lengths: flow lengths K.
        steps: Adam steps.
        anneal_steps: :math:`T_β` of the schedule :math:`β_t = \\min(1, 0.01 + t/T_β)`.
        num_samples: samples of q per step.
        lr: Adam learning rate of planar and radial flows (few parameters).
        lr_coupling: Adam learning rate of affine-coupling flows (MLPs; 5e-3 diverges at K = 32).
        clip_norm: gradient-norm clipping (the box wall gives rare huge gradients); ``inf`` disables.
        coupling_hidden: hidden units of each coupling layer's net.
        grid: G, the evaluation grid is G×G on [−4, 4]² (images are 2×2-pooled when G > 128).
        mc_samples: samples for the Monte Carlo free energy.
        wall_width: w of the quadratic wall outside the box added to U for training (0: none).
        seeds: independent fits (initialisation and draws) of each (potential, kind, length).
        threads: torch intra-op threads inside a cell (fixed so that results do not depend on the machine).
    """

    potentials: tuple[str, ...] = tuple(POTENTIALS)
    kinds: tuple[str, ...] = KINDS
    lengths: tuple[int, ...] = (2, 8, 32)
    steps: int = 400
    anneal_steps: int = 200
    num_samples: int = 256
    lr: float = 5e-3
    lr_coupling: float = 1e-3
    clip_norm: float = 10.0
    coupling_hidden: int = 64
    grid: int = 256
    mc_samples: int = 4096
    wall_width: float = 0.1
    seeds: int = 1
    threads: int = 1


def _flow(layers: torch.nn.ModuleList, base: Independent) -> TransformedDistribution:
    return TransformedDistribution(base, [layer.transform(None) for layer in layers], validate_args=False)


class Flows2D(Study):
    """Planar / radial / affine-coupling flows of length 2, 8, 32 on U1–U4: densities and box KL."""

    name = "flows-2d"
    description = (
        "planar/radial/coupling flows on the 2-D potentials U1-U4: density pictures and KL on [-4,4]^2"
    )
    reproduces = "Rezende & Mohamed 2015 Fig. 3: longer flows fit U1-U4 better (KL falls with K)"
    time = {
        "smoke": "5 s",
        "default": "~3 min on 2 CPU cores (400 steps, 1 seed; 9 min with --set seeds=3)",
        "full": "GPU (20000 steps)",
    }
    Config = Flows2DConfig

    def smoke(self) -> Flows2DConfig:
        return Flows2DConfig(
            potentials=("U1", "U2"),
            lengths=(2, 4),
            steps=10,
            anneal_steps=5,
            num_samples=32,
            coupling_hidden=8,
            grid=32,
            mc_samples=256,
        )

    def full(self) -> Flows2DConfig:
        """Paper-like size (Rezende & Mohamed 2015 §6.1, T_β = 10⁴): 20000 Adam steps annealed over
        10000, 512 samples per step, lr 1e-3 for planar/radial, a 512×512 evaluation grid."""
        return Flows2DConfig(steps=20000, anneal_steps=10000, num_samples=512, lr=1e-3, grid=512)

    def cells(self, cfg: Flows2DConfig) -> list[dict[str, Any]]:
        for name, values, valid in (
            ("potentials", cfg.potentials, POTENTIALS),
            ("kinds", cfg.kinds, KINDS),
        ):
            bad = [v for v in values if v not in valid]
            if bad:
                raise ValueError(f"unknown {name} {bad} for flows-2d; valid {name}: {', '.join(valid)}.")
        if any(k < 1 for k in cfg.lengths) or min(cfg.steps, cfg.anneal_steps, cfg.num_samples, cfg.grid) < 1:
            raise ValueError(
                "`lengths`, `steps`, `anneal_steps`, `num_samples` and `grid` must be >= 1; got "
                f"{cfg.lengths}, {cfg.steps}, {cfg.anneal_steps}, {cfg.num_samples}, {cfg.grid}."
            )
        if cfg.seeds < 1 or cfg.threads < 1:
            raise ValueError(f"`seeds` and `threads` must be >= 1; got {cfg.seeds}, {cfg.threads}.")
        return [
            {"potential": u, "kind": k, "length": n, "seed": s}
            for u in cfg.potentials
            for k in cfg.kinds
            for n in cfg.lengths
            for s in range(cfg.seeds)
        ]

    def run_cell(self, cfg: Flows2DConfig, cell: Mapping[str, Any], ctx: CellContext) -> list[dict[str, Any]]:
        before = torch.get_num_threads()
        torch.set_num_threads(cfg.threads)
        try:
            return self._fit(cfg, cell, ctx)
        finally:
            torch.set_num_threads(before)

    def _fit(self, cfg: Flows2DConfig, cell: Mapping[str, Any], ctx: CellContext) -> list[dict[str, Any]]:
        U = potential(cell["potential"])
        kind, K, dev = cell["kind"], int(cell["length"]), ctx.device
        layers = flow_layers(kind, 2, K, hidden=(cfg.coupling_hidden,)).to(dev)
        zero = torch.zeros(2, device=dev)
        base = Independent(Normal(zero, torch.ones_like(zero), validate_args=False), 1, validate_args=False)
        opt = torch.optim.Adam(layers.parameters(), lr=cfg.lr_coupling if kind == "coupling" else cfg.lr)
        est = scg.Pathwise()
        last = math.nan

        def energy(z: Tensor) -> Tensor:
            if cfg.wall_width <= 0:
                return U(z)
            out = torch.relu(z.abs() - BOX)
            return U(z) + (out * out).sum(-1) / (2 * cfg.wall_width**2)

        for t in range(cfg.steps):
            beta = min(1.0, 0.01 + t / cfg.anneal_steps)
            q = _flow(layers, base)
            loss = scg.expectation(
                lambda z, q=q, beta=beta: q.log_prob(z) + beta * energy(z),
                q,
                est,
                num_samples=cfg.num_samples,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(layers.parameters(), cfg.clip_norm)
            opt.step()
            last = float(loss.detach())
        with torch.no_grad():
            q = _flow(layers, base)
            z = q.sample((cfg.mc_samples,))
            inside = float((z.abs() <= BOX).all(-1).double().mean())
            F = q.log_prob(z) + U(z)
            free, free_se = float(F.mean()), float(F.std() / math.sqrt(cfg.mc_samples))
            pts, h = grid_points(cfg.grid, torch.float32, dev)
            log_q = torch.cat([q.log_prob(c) for c in pts.split(16384)]).double().cpu()
            log_p = -U(pts.double().cpu())
            log_z = float(torch.logsumexp(log_p, 0)) + 2 * math.log(h)
            log_mass = float(torch.logsumexp(log_q, 0)) + 2 * math.log(h)
            lq, lp = log_q - log_mass, log_p - log_z  # box-normalised log densities
            kl = float((lq.exp() * (lq - lp)).sum() * h * h)
        img = log_q.exp().reshape(cfg.grid, cfg.grid).numpy()
        if cfg.grid > 128 and cfg.grid % 2 == 0:
            img = img.reshape(cfg.grid // 2, 2, cfg.grid // 2, 2).mean((1, 3))
        return [
            {
                "potential": cell["potential"],
                "kind": kind,
                "length": K,
                "seed": int(cell.get("seed", 0)),
                "status": "ok",
                "kl_box": kl,
                "q_mass_box": math.exp(log_mass),
                "q_samples_in_box": inside,
                "log_z_box": log_z,
                "log_z_exact": LOG_Z_U1 if cell["potential"] == "U1" else math.nan,
                "free_energy_mc": free,
                "free_energy_se": free_se,
                "kl_mc": free + log_z,
                "final_loss": last,
                "steps": cfg.steps,
                "parameters": sum(p.numel() for p in layers.parameters()),
                "image": encode_image(img),
            }
        ]

    def plot(self, rows: Sequence[Mapping[str, Any]], cfg: Flows2DConfig, out_dir: Path) -> list[Path]:
        from scg.studies.flows_2d_plot import plot_flows

        return plot_flows(rows, cfg, Path(out_dir))


def summary(rows: Sequence[Mapping[str, Any]], column: str = "kl_box") -> list[dict[str, Any]]:
    """Mean and standard error over seeds of ``column`` per (potential, kind, length), in first-seen order."""
    groups: dict[tuple[str, str, int], list[float]] = {}
    for r in rows:
        if r.get("status") == "ok":
            groups.setdefault((str(r["potential"]), str(r["kind"]), int(r["length"])), []).append(
                float(r[column])
            )
    out = []
    for (u, k, n), v in groups.items():
        mean = sum(v) / len(v)
        se = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1) / len(v)) if len(v) > 1 else math.nan
        out.append(
            {
                "potential": u,
                "kind": k,
                "length": n,
                "seeds": len(v),
                "mean": mean,
                "se": se,
                "min": min(v),
                "max": max(v),
            }
        )
    return out


def summary_table(rows: Sequence[Mapping[str, Any]], column: str = "kl_box") -> str:
    """The README's markdown table: a line per potential, ``mean ± SE (n seeds)`` per kind and length."""
    summ = summary(rows, column)
    cols = list(dict.fromkeys((r["kind"], r["length"]) for r in summ))
    cell = {(r["potential"], r["kind"], r["length"]): r for r in summ}
    lines = [
        "| KL(q̄‖p̄) nats | " + " | ".join(f"{k} K = {n}" for k, n in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for u in dict.fromkeys(r["potential"] for r in summ):
        vals = []
        for k, n in cols:
            r = cell.get((u, k, n))
            if r is None:
                vals.append("–")
            elif r["seeds"] > 1:
                vals.append(f"{r['mean']:.2f} ± {r['se']:.2f} ({r['min']:.2f}–{r['max']:.2f})")
            else:
                vals.append(f"{r['mean']:.2f} (1 seed)")
        lines.append(f"| {u} | " + " | ".join(vals) + " |")
    return "\n".join(lines)
