"""Public argument checks for code built on scg (``scg.models``, ``studies``, your own).

Each raises with a message that names the argument, ``"`name` must ...; got ..."``
(see STYLE.md), and returns the checked value.
"""

from __future__ import annotations

__all__ = ["check_positive_int", "check_positive"]


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` as an int if it is an integer ≥ ``minimum``; raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int; got {type(value).__name__} ({value!r}).")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}; got {value}.")
    return value


def check_positive(name: str, value: float) -> float:
    """Return ``value`` if it is a finite positive number; raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a positive float; got {type(value).__name__} ({value!r}).")
    if not (value > 0) or value == float("inf"):
        raise ValueError(f"`{name}` must be positive and finite; got {value}.")
    return float(value)
