"""An algorithm's options, declared once on its class (``OPTIONS``) and read by everything else.

Each strategy class lists the keyword arguments it adds to (or changes in) its bases' as
:class:`Option` values: name, default, the values it takes (a type with its bounds: the check) and
a line of help. :meth:`lowcomm.algorithms.Strategy.options` merges them along the class hierarchy.
The constructor fills in the defaults and applies the checks; ``lowcomm train`` takes its flags,
the ``algorithm:`` section of its config, ``lowcomm bench``'s routing of flags to algorithms and
the options reference (:mod:`lowcomm.algorithms.reference`, docs/options.md) from the same declarations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, TypeAdapter, ValidationError

from lowcomm.communication.compression import parse_compression


def reject_bool(value: Any) -> Any:
    """YAML's ``true`` is not a count: pydantic would read it as 1."""
    if isinstance(value, bool):
        raise ValueError("Input should be a number, not a boolean")
    return value


def reject_non_finite(value: Any) -> Any:
    """NaN and infinity pass pydantic's float bounds unreported (or reported as out of range)."""
    reject_bool(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    if not math.isfinite(number):
        raise ValueError("Input should be a finite number")
    return value


Int = Annotated[int, BeforeValidator(reject_bool)]
"""An integer (not a boolean)."""
Float = Annotated[float, BeforeValidator(reject_non_finite)]
"""A finite number (not a boolean)."""


def integer(**bounds: int) -> Any:
    """An integer within pydantic's ``ge``/``gt``/``le``/``lt`` ``bounds``."""
    return Annotated[Int, Field(**bounds)]


def number(**bounds: float) -> Any:
    """A finite number within pydantic's ``ge``/``gt``/``le``/``lt`` ``bounds``."""
    return Annotated[Float, Field(**bounds)]


def check_compression(value: str) -> str:
    """A compression scheme :func:`~lowcomm.communication.compression.parse_compression` knows."""
    parse_compression(value)
    return value


Compression = Annotated[str, AfterValidator(check_compression)]


def problem_text(problem: Mapping[str, Any], name: str) -> str:
    """One problem of a pydantic ValidationError as ``message (got value)``, without a leading ``name: ``."""
    message = str(problem["ctx"]["error"]) if problem["type"] == "value_error" else problem["msg"]
    message = (message.splitlines()[0] if message else problem["type"]).removeprefix(f"{name}: ")
    shown = repr(problem["input"])
    return message if problem["type"] == "value_error" or len(shown) > 60 else f"{message} (got {shown})"


@dataclass(frozen=True)
class Option:
    """One keyword argument of an algorithm's constructor.

    Attributes:
        name: the keyword (and, with ``flag``, the ``lowcomm train`` flag ``--name-with-dashes`` and
            the key of the config's ``algorithm:`` section).
        default: the value where none is given.
        help: what it is, in one line.
        type: the values it takes, a type annotation with its bounds (see :func:`integer`,
            :func:`number`): the check every value must meet on its own. Rules between options are
            the class's ``check_options``; rules that need the model (a block size) its constructor's.
        flag: whether ``lowcomm train`` and ``lowcomm bench`` take it (False for library-only options
            such as an outer optimizer factory).
    """

    name: str
    default: Any
    help: str
    type: Any = Any
    flag: bool = True

    @cached_property
    def adapter(self) -> TypeAdapter[Any]:
        return TypeAdapter(self.type)

    def checked(self, value: Any) -> Any:
        """``value`` if it meets the rule (normalised: ``1`` for a number is ``1.0``); else a one-line ValueError."""
        try:
            return self.adapter.validate_python(value)
        except ValidationError as error:
            raise ValueError(f"{self.name}: {problem_text(error.errors()[0], self.name)}") from None

    def describe(self) -> str:
        """``help (default: value)``; a default of None is the help's to explain."""
        return self.help if self.default is None else f"{self.help} (default: {self.default})"


COMPRESSION = (
    Option("compress", "none", "how the averaged values travel: none, bf16, int8, int4 or topk:FRACTION", Compression),
    Option("compress_block_size", None, "values sharing one scale or one top-k selection (default 256 for int8 "
           "and int4, 4096 for top-k)", integer(ge=1) | None, flag=False),
)
"""The options of the algorithms that average through a compressed mean (Local SGD, DiLoCo)."""


def options_docstring(options: Mapping[str, Option]) -> str:
    """The ``Options:`` section of a strategy class's docstring."""
    lines = [f"    {option.name}: {option.describe()}" + ("" if option.flag else "; library only")
             for option in options.values()]
    return "\n".join(["Options (keyword arguments; see ``OPTIONS``):", *lines])

