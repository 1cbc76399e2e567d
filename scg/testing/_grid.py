"""Tensor-product quadrature grids over the random inputs of an estimator.

The grid is the tensor product of all variables' rules (see :mod:`._rules`);
:class:`Grid` walks it in chunks without materialising it. Starting node counts
adapt to a budget (:func:`choose_nodes`; :mod:`._refine` then doubles them where
needed), and :meth:`Grid.probe` finds the laws each gradient component depends on,
or on which it is piecewise constant, so that the others need one node (per
piece) — e.g. the value's noise in measure-valued estimators, or DisARM's uniforms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from scg.testing._rules import Rule, Spec, rule

__all__ = [
    "Variable",
    "Grid",
    "choose_nodes",
    "grid_points",
    "build",
    "make_grid",
    "chunk_size",
    "freeze",
    "batch_groups",
    "fill_values",
]

# (n_start, n_comfortable, n_min) nodes per piece, by rule kind: the starting counts of
# the error-controlled refinement (scg.testing._refine doubles them where needed). Counts
# start at n_start, are lowered to n_comfortable while the grid exceeds _TARGET points,
# then to n_min while it exceeds max_points.
_LIMITS = {
    "hermite": (16, 8, 5),
    "maxwell": (16, 8, 6),
    "gauss": (16, 8, 5),
    "legendre": (12, 6, 3),
    "de": (32, 24, 16),
}
_TARGET = 20_000


@dataclass
class Variable:
    """An integration variable with its rule; nodes are sorted by piece."""

    law: str
    positions: Tensor  # [width] long
    values: Tensor  # [m, width (+ width of the partner)]
    weights: Tensor  # [m] float64
    piece: Tensor  # [m] long, the piece of every node (discrete values: one piece each)
    partner: tuple[str, Tensor] | None = None  # a second law's (name, positions) in a nested rule

    def columns(self) -> list[tuple[str, Tensor, slice]]:
        """``(law, positions, columns of values)`` for the law and its partner."""
        width = len(self.positions)
        out = [(self.law, self.positions, slice(0, width))]
        if self.partner is not None:
            out.append((self.partner[0], self.partner[1], slice(width, None)))
        return out


# ----------------------------------------------------------------------------- node counts


def _count(spec: Spec, n: int) -> int:
    return spec.size if spec.kind == "fixed" else spec.pieces * n


def grid_points(specs: list[Spec], counts: list[int]) -> float:
    """Number of points of the grid with these node counts (an upper bound: rules may drop nodes)."""
    return math.prod(_count(s, n) for s, n in zip(specs, counts, strict=False))


def _power_of_ten(log_value: float) -> str:
    """``exp(log_value)`` written without overflow: ``"3.2e+05"``, or ``"10^4512.3"`` beyond floats."""
    if log_value < 700:
        return f"{math.exp(log_value):.3g}"
    return f"10^{log_value / math.log(10):.1f}"


def choose_nodes(
    specs: list[Spec],
    max_points: int,
    nodes: None | int | dict[str, int],
    *,
    headroom: int = 1,
) -> list[int]:
    """Starting nodes per piece for every variable: a grid of at most ``max_points / headroom`` points.

    ``nodes`` (an int for every continuous variable, or ``{law name: int}`` for some
    laws) fixes counts; the others start from their rule kind's maximum and the
    relatively largest are lowered first — to a comfortable minimum while the grid
    exceeds ``_TARGET`` points, then to the hard minimum while it exceeds
    ``max_points``. Raises ``ValueError`` (naming the sizes) if that is not enough.
    """
    fixed = [s.size for s in specs if s.kind == "fixed"]
    log_fixed = sum(math.log(k) for k in fixed)
    cont = [i for i, s in enumerate(specs) if s.kind != "fixed"]
    given = {
        i: nodes if isinstance(nodes, int) else nodes[specs[i].law]
        for i in cont
        if nodes is not None and (isinstance(nodes, int) or specs[i].law in nodes)
    }
    counts = [given.get(i, _LIMITS[s.kind][0] if s.kind != "fixed" else 0) for i, s in enumerate(specs)]

    def log_total() -> float:
        return log_fixed + sum(math.log(_count(specs[i], counts[i])) for i in cont)

    room = max(1, max_points // headroom)
    floors = [given.get(i, _LIMITS[specs[i].kind][2]) for i in cont]
    log_min = log_fixed + sum(math.log(_count(specs[i], n)) for i, n in zip(cont, floors, strict=False))
    if log_min > math.log(room) + 1e-9:  # even the smallest grid is too large: refuse in O(variables)
        counts = [given.get(i, _LIMITS[s.kind][2] if s.kind != "fixed" else 0) for i, s in enumerate(specs)]
    elif len(given) < len(cont):
        for limit, floor in ((min(_TARGET, room), 1), (room, 2)):
            while log_total() > math.log(limit) + 1e-9:
                movable = [i for i in cont if i not in given and counts[i] > _LIMITS[specs[i].kind][floor]]
                if not movable:
                    break
                i = max(movable, key=lambda i: counts[i] / _LIMITS[specs[i].kind][0])
                n_floor = _LIMITS[specs[i].kind][floor]
                counts[i] = max(n_floor, min(counts[i] - 1, int(counts[i] * 0.85)))
    if log_total() > math.log(room) + 1e-9:
        pieces = sorted({specs[i].pieces for i in cont})
        how = f"`nodes` = {nodes!r} per piece" if nodes is not None else "the minimum nodes per piece"
        raise ValueError(
            f"the exact grid needs about {_power_of_ten(log_total())} points > `max_points` = {max_points}"
            f"{'' if headroom == 1 else f' / {headroom} (room to refine)'}: "
            f"{len(fixed)} discrete variables with {_power_of_ten(log_fixed)} joint values and "
            f"{len(cont)} continuous variables at {how} (pieces per variable: {pieces}). Reduce "
            "num_samples or the number of elements, pass a smaller `nodes`, or raise `max_points`."
        )
    return counts


def build(
    specs: list[Spec], counts: list[int], dtypes: dict[str, torch.dtype], device: torch.device
) -> list[Variable]:
    """Make every variable's rule (identical keys share one computation; see :func:`._rules.rule`)."""
    cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    out = []
    for spec, n in zip(specs, counts, strict=False):
        key = spec.key + (n,)
        if key not in cache:
            cache[key] = rule(spec, n)
        values, weights = cache[key]
        values = np.array(values, dtype=np.float64)  # a copy: cached rules are read-only
        weights = np.array(weights, dtype=np.float64)
        if values.ndim == 1:
            values = values[:, None]
        if spec.edges is None or values.shape[1] != 1:
            piece = np.arange(len(weights))
        else:
            piece = np.searchsorted(np.asarray(spec.edges[1:-1]), values[:, 0], side="right")
        partner = None
        if spec.partner is not None:
            partner = (
                spec.partner[0],
                torch.as_tensor(spec.partner[1], dtype=torch.long, device=device),
            )
        out.append(
            Variable(
                spec.law,
                torch.as_tensor(spec.positions, dtype=torch.long, device=device),
                torch.as_tensor(values, device=device).to(dtypes[spec.law]),
                torch.as_tensor(weights, dtype=torch.float64, device=device),
                torch.as_tensor(piece, dtype=torch.long, device=device),
                partner,
            )
        )
    return out


def make_grid(
    specs: list[Spec],
    shapes: dict[str, tuple[int, ...]],
    dtypes: dict[str, torch.dtype],
    device: torch.device,
    max_points: int,
    nodes: None | int | dict[str, int],
    fill: dict[str, Tensor] | None = None,
) -> Grid:
    """The grid of ``specs`` with node counts from :func:`choose_nodes`."""
    return Grid(
        build(specs, choose_nodes(specs, max_points, nodes), dtypes, device),
        shapes,
        dtypes,
        device,
        fill,
    )


def chunk_size(shapes: dict[str, tuple[int, ...]]) -> int:
    """Grid points per chunk: about 2¹⁷ law elements, between 64 and 8192 points."""
    elements = sum(int(np.prod(s)) if s else 1 for s in shapes.values())
    return int(min(8192, max(64, 2**17 // max(1, elements))))


# ----------------------------------------------------------------------------- the grid


class Grid:
    """Tensor product of variables' rules, walked in chunks (mixed-radix indexing)."""

    def __init__(
        self,
        variables: list[Variable],
        shapes: dict[str, tuple[int, ...]],
        dtypes: dict[str, torch.dtype],
        device: torch.device,
        fill: dict[str, Tensor] | None = None,
    ) -> None:
        self.variables = variables
        self.fill = fill  # flat values of positions no variable covers (default 0)
        self.shapes = shapes
        self.dtypes = dtypes
        self.device = device
        self.sizes = [len(v.weights) for v in variables]
        self.size = int(np.prod(self.sizes, dtype=np.float64)) if variables else 1
        strides, acc = [], 1
        for m in reversed(self.sizes):
            strides.append(acc)
            acc *= m
        self.strides = list(reversed(strides))

    def chunks(self, chunk: int) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        """Yield ``(draws, weights)``: draws ``{law: [C, *shape]}``, weights ``[C]`` (float64)."""
        for start in range(0, self.size, chunk):
            idx = torch.arange(start, min(start + chunk, self.size), device=self.device)
            digits = [
                torch.div(idx, stride, rounding_mode="floor") % m
                for m, stride in zip(self.sizes, self.strides, strict=False)
            ]
            yield self.at(torch.stack(digits, 1) if digits else idx[:, None])

    def at(self, digits: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Draws and weights at grid points given by their digits ``[C, V]`` (one per variable)."""
        C = len(digits)
        if self.fill is not None:
            flat = {name: self.fill[name].expand(C, -1).clone() for name in self.shapes}
        else:
            flat = {
                name: torch.zeros(
                    C,
                    int(np.prod(shape)) if shape else 1,
                    dtype=self.dtypes[name],
                    device=self.device,
                )
                for name, shape in self.shapes.items()
            }
        w = torch.ones(C, dtype=torch.float64, device=self.device)
        for i, v in enumerate(self.variables):
            digit = digits[:, i]
            for law, positions, cols in v.columns():
                flat[law][:, positions] = v.values[digit, cols].to(self.dtypes[law])
            w = w * v.weights[digit]
        return {name: x.reshape(C, *self.shapes[name]) for name, x in flat.items()}, w

    def probe(
        self, gradients: Callable[[dict[str, Tensor]], Tensor], *, within: bool, probes: int = 16
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Which gradient components depend on each law (``within=False``), or vary within
        the law's pieces between breakpoints (``within=True``), found by probing.

        At ``probes`` grid points drawn by their probability mass each law's values are
        moved to other nodes, also drawn by mass: within the same piece, or (``within=False``)
        into every piece in turn (up to 16; the law's variables to different pieces, so
        that exchangeable draws are not made equal), and four times anywhere — so that a
        piece of little mass is not missed.

        Returns:
            ``({law: [P] bool}, seen [P] bool)``: True where a component changed by more
            than 1e-12 relative when the law's values moved (all True for a law none of
            whose nodes could move), and ``seen`` where a component was nonzero at some
            probe. A component never seen nonzero shows nothing about its laws.
        """
        gen = torch.Generator().manual_seed(0)
        digits = torch.stack(
            [
                torch.multinomial(v.weights.cpu(), probes, replacement=True, generator=gen)
                for v in self.variables
            ],
            1,
        ).to(self.device)
        G0 = gradients(self.at(digits)[0])
        seen = (G0 != 0).any(0)
        found: dict[str, Tensor] = {}
        for law in self.shapes:
            idx = [i for i, v in enumerate(self.variables) if v.law == law]
            if not idx:
                continue
            pieces = max(int(self.variables[i].piece.max()) + 1 for i in idx)
            targets = [None] if within else [*range(min(16, pieces)), -1, -1, -1, -1]
            changed = torch.zeros(G0.shape[1], dtype=torch.bool, device=G0.device)
            tried = False
            for target in targets:
                moved = digits.clone()
                for k, i in enumerate(idx):
                    to = target if target is None or target < 0 else (target + k) % pieces
                    moved[:, i] = self._move(i, digits[:, i], to, gen)
                if bool((moved == digits).all()):
                    continue
                tried = True
                G1 = gradients(self.at(moved)[0])
                seen = seen | (G1 != 0).any(0)
                changed |= ((G1 - G0).abs() > 1e-12 * (1.0 + G0.abs())).any(0)
            found[law] = changed if tried else torch.ones_like(changed)
        return found, seen

    def _move(self, i: int, digit: Tensor, target: int | None, gen: torch.Generator) -> Tensor:
        """Other node indices of variable i drawn by weight: in piece ``target`` (the last
        piece if it has fewer), anywhere if ``target`` is -1, or in the same piece as
        before if ``target`` is None."""
        v = self.variables[i]
        w, piece = v.weights.cpu(), v.piece.cpu()
        out = digit.clone()
        for k, d in enumerate(digit.tolist()):
            if target is not None and target < 0:
                allowed = torch.ones_like(w, dtype=torch.bool)
            else:
                allowed = piece == (piece[d] if target is None else min(target, int(piece.max())))
            allowed[d] = False
            if bool(allowed.any()):
                out[k] = int(
                    torch.multinomial(torch.where(allowed, w, torch.zeros_like(w)), 1, generator=gen)
                )
        return out


def _fixed_rule(values: np.ndarray, weights: np.ndarray) -> Callable[[int], Rule]:
    """A rule with the same nodes and weights at every node count."""
    return lambda n: (values, weights)


def freeze(
    specs: list[Spec], variables: list[Variable], laws: Sequence[str], *, per_piece: bool
) -> list[Spec]:
    """Replace the rules of ``laws`` by one node (per piece): the heaviest, with the total weight."""
    out = []
    for spec, v in zip(specs, variables, strict=False):
        if spec.law in laws:
            groups = v.piece if per_piece else torch.zeros_like(v.piece)
            rows, mass = [], []
            for p in torch.unique(groups).tolist():
                members = (groups == p).nonzero().reshape(-1)
                k = int(members[torch.argmax(v.weights[members])])
                rows.append(v.values[k].double().cpu().numpy())
                mass.append(float(v.weights[members].sum()))
            values, weights = np.stack(rows), np.asarray(mass)
            spec = Spec(
                spec.law,
                spec.positions,
                _fixed_rule(values, weights),
                ("frozen", tuple(values.reshape(-1).tolist())),
                1,
                "fixed",
                len(weights),
                partner=spec.partner,
            )
        out.append(spec)
    return out


def batch_groups(
    specs: list[Spec], shapes: dict[str, tuple[int, ...]], batch: tuple[int, ...]
) -> list[list[int]]:
    """Indices of the variables of every batch element (one group if that is not possible).

    Batch elements are independent expectations: the gradient of surrogate element b
    depends only on batch element b's draws, so each can be integrated on its own
    grid (the sum of the grids' sizes instead of their product). Requires every law
    to be laid out ``[S, *batch, ...]``.
    """
    nb = len(batch)
    B = int(np.prod(batch)) if nb else 1
    every = [list(range(len(specs)))]
    if B == 1 or any(tuple(shape[1 : 1 + nb]) != tuple(batch) for shape in shapes.values()):
        return every
    groups: list[list[int]] = [[] for _ in range(B)]
    for i, spec in enumerate(specs):
        rest = int(np.prod(shapes[spec.law][1 + nb :]))
        members = {(int(p) // rest) % B for p in spec.positions}
        if len(members) != 1:
            return every
        groups[members.pop()].append(i)
    return groups


def fill_values(
    variables: list[Variable],
    shapes: dict[str, tuple[int, ...]],
    dtypes: dict[str, torch.dtype],
    device: torch.device,
) -> dict[str, Tensor]:
    """Flat law values with every variable at its heaviest node: valid draws for the
    positions a batch element's grid does not cover."""
    out = {
        name: torch.zeros(int(np.prod(shape)) if shape else 1, dtype=dtypes[name], device=device)
        for name, shape in shapes.items()
    }
    for v in variables:
        for law, positions, cols in v.columns():
            out[law][positions] = v.values[int(torch.argmax(v.weights)), cols].to(dtypes[law])
    return out
