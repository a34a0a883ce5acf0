"""An algorithm's options, declared once on its class (``OPTIONS``) and read by everything else.

Each strategy class lists the keyword arguments it adds to (or changes in) its bases' as
:class:`Option` values; :meth:`lowcomm.algorithms.Strategy.options` merges them along the class
hierarchy. The constructor applies the declared checks, and ``lowcomm train`` takes its defaults, its
"does not take it" errors and its checks from the same declaration, as ``lowcomm bench`` takes
which flags go to which algorithm.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lowcomm.communication.compression import parse_compression

Check = Callable[[str, Any], Any]
"""``check(name, value)``: the value (normalised), or a one-line ValueError that starts with ``name:``."""


@dataclass(frozen=True)
class Option:
    """One keyword argument of an algorithm's constructor.

    Attributes:
        name: the keyword (and, with ``flag``, the ``lowcomm train`` flag ``--name-with-dashes``).
        default: the constructor's default.
        check: the rule every value must meet on its own; None where the constructor checks it in
            context (a device, a block size). Rules between options are the class's ``check_options``.
        flag: whether ``lowcomm train`` and ``lowcomm bench`` take it (False for library-only options
            such as an outer optimizer factory).
    """

    name: str
    default: Any
    check: Check | None = None
    flag: bool = True

    def checked(self, value: Any) -> Any:
        """``value`` if it meets the rule (normalised, as the check returns it); else a ValueError."""
        return value if self.check is None else self.check(self.name, value)


def check_int_at_least(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")
    return value


def at_least(minimum: int) -> Check:
    """The check of an integer ``>= minimum``."""
    return lambda name, value: check_int_at_least(name, value, minimum)


def check_fraction(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and 0 <= value < 1):
        raise ValueError(f"{name}: must be in [0, 1), got {value!r}")
    return float(value)


def check_positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
    return float(value)


def check_compression(name: str, value: str) -> str:
    """A compression scheme :func:`~lowcomm.communication.compression.parse_compression` knows."""
    parse_compression(value)
    return value


COMPRESSION = (Option("compress", "none", check_compression), Option("compress_block_size", None, flag=False))
"""The options of the algorithms that average through a compressed mean (Local SGD, DiLoCo)."""
