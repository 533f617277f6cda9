"""One style of argument checks for the whole package.

Every check takes the argument's name as the user sees it (``"run_search.batch_size"``,
``"InterleavingConfig.rounds"``, ``"stride"``), the value, and what is allowed; it returns the
value converted to its plain Python type, or raises ``ValueError`` with one message of the form

    <name>=<value!r> is invalid: expected <what is allowed>

Booleans are never accepted as numbers, and a string is never accepted as a sequence (so
``datasets='cifar10'`` is an error instead of a list of characters).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence


def fail(name: str, value, expected: str):
    """Raises the package's ``ValueError`` for ``name=value`` (never returns)."""
    raise ValueError(f"{name}={value!r} is invalid: expected {expected}")


def _bounds(minimum, maximum, exclusive_minimum=False) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if exclusive_minimum else '>='} {minimum}")
    if maximum is not None:
        parts.append(f"<= {maximum}")
    return " and ".join(parts)


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (not a bool) within ``[minimum, maximum]`` (either bound optional)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        fail(name, value, f"an integer {_bounds(minimum, maximum)}".rstrip())
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        fail(name, value, f"an integer {_bounds(minimum, maximum)}")
    return value


def check_number(
    name: str,
    value,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    exclusive_minimum: bool = False,
) -> float:
    """A finite real number (not a bool) within the bounds; ``exclusive_minimum``: > minimum."""
    expected = f"a finite number {_bounds(minimum, maximum, exclusive_minimum)}".rstrip()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        fail(name, value, expected)
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        fail(name, value, expected)
    if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
        fail(name, value, expected)
    if maximum is not None and value > maximum:
        fail(name, value, expected)
    return value


def check_bool(name: str, value) -> bool:
    """``True`` or ``False`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        fail(name, value, "True or False")
    return value


def check_choice(name: str, value, choices: Sequence):
    """One of ``choices``."""
    if isinstance(value, (list, dict, set)) or value not in tuple(choices):
        fail(name, value, f"one of {tuple(choices)}")
    return value


def check_sequence(
    name: str,
    value,
    *,
    length: int | None = None,
    min_length: int = 0,
    item: Callable | None = None,
) -> tuple:
    """A list or tuple (not a string) of ``length`` (or at least ``min_length``) items.

    Args:
      name: the argument's name in messages.
      value: the value to check.
      length: the exact length required, if any.
      min_length: the smallest length allowed.
      item: ``item(item_name, item_value) -> converted`` applied to each item (for example
        ``check_int`` with bounds bound by ``functools.partial``); its messages name
        ``name[i]``.

    Returns:
      A tuple of the (converted) items.
    """
    described = f"a list or tuple of {length} items" if length is not None else (
        f"a list or tuple of at least {min_length} item{'s' if min_length != 1 else ''}"
    )  # fmt: skip
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        fail(name, value, described)
    if (length is not None and len(value) != length) or len(value) < min_length:
        fail(name, value, described)
    if item is None:
        return tuple(value)
    return tuple(item(f"{name}[{i}]", v) for i, v in enumerate(value))


def check_optional(check: Callable, name: str, value, *args, **kwargs):
    """``None``, or ``check(name, value, *args, **kwargs)``."""
    return None if value is None else check(name, value, *args, **kwargs)
