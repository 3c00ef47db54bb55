"""Kubernetes resource quantities: their value (`parse_quantity`, one grammar for the whole
project), and read as GPU memory in MiB (`parse_mib`).

The gpumem extended resource counts MiB, so a plain number or a decimal suffix is a count of MiB
("3000" -> 3000, "5k" -> 5000). A binary suffix names bytes, the way people write memory
("3Gi" -> 3072, "3000Mi" -> 3000). kube-scheduler compares the raw quantity value, so the
webhook rewrites every declaration into the integer MiB this module computes.
"""

from __future__ import annotations

import functools
import math
import re
from fractions import Fraction

MIB = 1 << 20

_BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}
_DECIMAL = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
# The grammar of resource.Quantity: sign, digits with an optional fraction, then a binary
# suffix, a decimal suffix or a decimal exponent.
_QUANTITY = re.compile(
    r"^(?P<sign>[+-]?)(?P<number>\d+(?:\.\d*)?|\.\d+)"
    r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])|[eE](?P<exponent>[+-]?\d+))?$"
)
# Anything above this is a typo or an attack, not a GPU; it also keeps Fraction arithmetic cheap.
_MAX_EXPONENT = 30
# The longest quantity text read: "18446744073709551615.999999999Ei" is 32 characters.
_MAX_LENGTH = 64
# Distinct quantity strings remembered (a cluster uses a handful: "1024", "8Gi", ...); the
# extender reads every GPU pod's on each watch event and the Fraction arithmetic is its cost.
_CACHED_TEXTS = 1024


class QuantityError(ValueError):
    """A value that is not a Kubernetes quantity."""


def parse_quantity(text: str) -> Fraction:
    """The value of a Kubernetes quantity, signed: "15k" = 15000, "2Ki" = 2048, "1.5e3" = 1500,
    "-1" = -1; surrounding whitespace is ignored.

    Raises QuantityError when `text` is not a quantity, or when its decimal exponent is beyond
    +-30.
    """
    stripped = text.strip()
    match = _match(stripped)
    value = _magnitude(match, stripped)
    return -value if match["sign"] == "-" else value


def parse_mib(value: object) -> int:
    """Return a quantity of GPU memory as whole MiB, rounded up.

    Rounding up is the safe side: a pod that says 0.5 MiB still takes memory.
    Raises QuantityError for anything that is not a non-negative quantity.
    """
    if isinstance(value, str):
        return _parse_text(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise QuantityError(f"quantity must be a string or a number, not {type(value).__name__}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QuantityError(f"quantity {value!r} is not finite")
        return _parse_text(repr(value))
    if value.bit_length() > _MAX_LENGTH * 4:
        # str() of an int past 4300 digits raises ValueError; this one is far from a quantity.
        raise QuantityError(f"quantity of {value.bit_length()} bits is out of range")
    return _parse_text(str(value))


@functools.lru_cache(maxsize=_CACHED_TEXTS)
def _parse_text(text: str) -> int:
    """parse_mib of a stripped string; errors are raised, not remembered.

    parse_quantity's grammar and value, read as MiB: the sign is refused before the exponent
    is looked at (a negative quantity says "negative", whatever its size), and a binary suffix
    counts bytes."""
    match = _match(text)
    if match["sign"] == "-":
        raise QuantityError(f"quantity {text!r} is negative")
    mib = _magnitude(match, text)
    if match["suffix"] in _BINARY:
        mib /= MIB
    return math.ceil(mib)


def _match(text: str) -> re.Match[str]:
    if len(text) > _MAX_LENGTH:
        # Before the grammar: Python refuses to turn more than 4300 digits into an int, and a
        # long number costs time in Fraction arithmetic. No real quantity comes close.
        raise QuantityError(
            f"quantity {text[:20]!r}... is {len(text)} characters long, more than {_MAX_LENGTH}"
        )
    match = _QUANTITY.match(text)
    if match is None:
        raise QuantityError(f"{text!r} is not a Kubernetes quantity (e.g. 3000, 5k, 3Gi)")
    return match


def _magnitude(match: re.Match[str], text: str) -> Fraction:
    """The unsigned value of a matched quantity."""
    number = Fraction(match["number"])
    exponent = match["exponent"]
    if exponent is not None:
        power = int(exponent)
        if abs(power) > _MAX_EXPONENT:
            raise QuantityError(f"quantity {text!r} is out of range")
        return number * Fraction(10) ** power
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    return number * _DECIMAL[suffix]


def format_mib(mib: int) -> str:
    """Human-readable size: MiB below 10 GiB, GiB with one decimal above."""
    if abs(mib) >= 10 * 1024:
        return f"{mib / 1024:.1f} GiB"
    return f"{mib} MiB"
