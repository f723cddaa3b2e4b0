"""The one validation layer of FewStep: the nodes, the routes and the pure code check a value with these,
so a bad value gets the same clear error everywhere, naming the widget (or option) and its allowed range.

``where`` prefixes the message with the node (``"FewStepDDIM: eta must be ..."``); the pure code leaves
it empty. ComfyUI's own schema already clamps widget values in the graph editor; these checks are for
everything else (the API, saved workflows edited by hand, other callers) and lose nothing: they raise
before any work starts.
"""
from __future__ import annotations

import math


def _say(where: str, text: str) -> str:
    return f"{where}: {text}" if where else text


def check_int(value, lo: int, hi: int, widget: str, where: str = "") -> int:
    """A whole number in [lo, hi] (an integral float such as 3.0 counts; booleans do not)."""
    try:
        ok = not isinstance(value, bool) and int(value) == value
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or not (lo <= int(value) <= hi):
        raise ValueError(_say(where, f"{widget} must be a whole number in [{lo}, {hi}], got {value!r}"))
    return int(value)


def check_float(value, lo: float, hi: float, widget: str, where: str = "", lo_open: bool = False) -> float:
    """A number in [lo, hi] (``lo_open``: (lo, hi]); NaN never, inf only when it is a bound."""
    try:
        v = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not ((lo < v if lo_open else lo <= v) and v <= hi):      # NaN fails both comparisons
        left = "(" if lo_open else "["
        raise ValueError(_say(where, f"{widget} must be a number in {left}{lo}, {hi}], got {value!r}"))
    return v


def check_choice(value, choices, widget: str, where: str = ""):
    if value not in choices:
        raise ValueError(_say(where, f"{widget} must be one of {list(choices)}, got {value!r}"))
    return value


def check_bool(value, widget: str, where: str = "") -> bool:
    if not isinstance(value, bool):
        raise ValueError(_say(where, f"{widget} must be true or false, got {value!r}"))
    return value
