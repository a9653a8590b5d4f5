"""Argument checks shared by the whole library: each returns the (normalised) value or raises.

Every check names the argument and what was expected, and refuses what Python would let through
silently: ``True`` is not an int here, ``nan`` is not a positive number, ``inf`` is not finite.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Optional

__all__ = [
    "check_bool",
    "check_int",
    "check_number",
    "check_one_of",
    "check_probability",
    "optional",
]


def check_int(name: str, value: Any, minimum: Optional[int] = 1, maximum: Optional[int] = None) -> int:
    """An int (not a bool) in ``[minimum, maximum]``: ``ValueError`` otherwise (``TypeError`` for non-numbers)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Number) or value is None or isinstance(value, bool):
            raise ValueError(f"{name} must be an int{_range(minimum, maximum)}, got {value!r}")
        raise TypeError(f"{name} must be an int{_range(minimum, maximum)}, got {type(value).__name__}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an int{_range(minimum, maximum)}, got {value!r}")
    return int(value)


def check_number(
    name: str,
    value: Any,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    strict_min: bool = True,
    strict_max: bool = False,
    finite: bool = True,
) -> float:
    """A real number (not a bool, not NaN; finite unless ``finite=False``) in the given bounds, as a float.

    ``minimum=0`` with ``strict_min=True`` means "positive".
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if hasattr(value, "item") and getattr(value, "numel", lambda: 0)() == 1:  # a 0-d tensor or numpy scalar
            value = value.item()
        else:
            raise TypeError(
                f"{name} must be a number{_bounds(minimum, maximum, strict_min, strict_max)}, "
                f"got {type(value).__name__}"
            )
    v = float(value)
    bad = math.isnan(v) or (finite and math.isinf(v))
    if minimum is not None:
        bad = bad or (v <= minimum if strict_min else v < minimum)
    if maximum is not None:
        bad = bad or (v >= maximum if strict_max else v > maximum)
    if bad:
        raise ValueError(
            f"{name} must be a {'finite ' if finite else ''}number"
            f"{_bounds(minimum, maximum, strict_min, strict_max)}, got {value!r}"
        )
    return v


def check_probability(name: str, value: Any) -> float:
    """A number strictly between 0 and 1."""
    return check_number(name, value, 0.0, 1.0, strict_min=True, strict_max=True)


def check_bool(name: str, value: Any) -> bool:
    """``True`` or ``False`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_one_of(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """One of ``choices`` (compared with ``==``)."""
    choices = tuple(choices)
    if isinstance(value, (list, dict, set)) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def optional(check, *args: Any, **kwargs: Any):
    """A check that also accepts ``None``: ``optional(check_int, minimum=1)(name, value)``."""

    def run(name: str, value: Any) -> Any:
        return None if value is None else check(name, value, *args, **kwargs)

    return run


def _range(minimum: Optional[int], maximum: Optional[int]) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum == 1:
        return " >= 1 (positive)"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def _bounds(minimum, maximum, strict_min, strict_max) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if strict_min else '>='} {minimum:g}")
    if maximum is not None:
        parts.append(f"{'<' if strict_max else '<='} {maximum:g}")
    return (" " + " and ".join(parts)) if parts else ""
