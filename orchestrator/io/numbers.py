"""Which values are usable numbers: one definition of "finite" for records, leaderboards and selection."""

from __future__ import annotations

import math
from typing import Any


def is_finite(value: Any) -> bool:
    """A real number (not a bool, not None, not a string) that is neither NaN nor infinite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def finite_or_none(value: Any) -> float | None:
    """The value as a float where it is finite, else None (JSON and Parquet have no NaN)."""
    return float(value) if is_finite(value) else None


def finite_or_nan(value: Any) -> float:
    """The value as a float where it is finite, else NaN (for tables that rank, where NaN never wins)."""
    return float(value) if is_finite(value) else math.nan
