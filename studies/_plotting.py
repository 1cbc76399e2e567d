"""Helpers shared by the studies' figures: a headless pyplot and tolerant number parsing."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["pyplot", "number"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (figures are only saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def number(value: Any) -> float | None:
    """A cell of results as a float; ``None`` for empty, non-numeric or nan cells."""
    if value is None or value == "":
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x
