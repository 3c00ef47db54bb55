"""Kubernetes resource quantities, read as GPU memory in MiB.

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
# Distinct quantity strings remembered (a cluster uses a handful: "1024", "8Gi", ...); the
# extender reads every GPU pod's on each watch event and the Fraction arithmetic is its cost.
_CACHED_TEXTS = 1024


class QuantityError(ValueError):
    """A value that is not a Kubernetes quantity."""


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
    return _parse_text(str(value))


@functools.lru_cache(maxsize=_CACHED_TEXTS)
def _parse_text(text: str) -> int:
    """parse_mib of a stripped string; errors are raised, not remembered."""
    match = _QUANTITY.match(text)
    if match is None:
        raise QuantityError(f"{text!r} is not a Kubernetes quantity (e.g. 3000, 5k, 3Gi)")
    if match["sign"] == "-":
        raise QuantityError(f"quantity {text!r} is negative")
    number = Fraction(match["number"])
    suffix = match["suffix"]
    exponent = match["exponent"]
    if exponent is not None:
        power = int(exponent)
        if abs(power) > _MAX_EXPONENT:
            raise QuantityError(f"quantity {text!r} is out of range")
        mib = number * Fraction(10) ** power
    elif suffix in _BINARY:
        mib = number * _BINARY[suffix] / MIB
    else:
        mib = number * _DECIMAL[suffix or ""]
    return math.ceil(mib)


def format_mib(mib: int) -> str:
    """Human-readable size: MiB below 10 GiB, GiB with one decimal above."""
    if abs(mib) >= 10 * 1024:
        return f"{mib / 1024:.1f} GiB"
    return f"{mib} MiB"
