import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpumem.quantity import QuantityError, format_mib, parse_mib, parse_quantity


@pytest.mark.parametrize(
    ("value", "mib"),
    [
        ("3000", 3000),
        (3000, 3000),
        ("5k", 5000),
        ("3Gi", 3072),
        ("3000Mi", 3000),
        ("1.5Gi", 1536),
        ("1536Ki", 2),  # 1.5 MiB rounds up: a fraction of a MiB still takes memory
        ("500m", 1),
        ("0", 0),
        ("1e3", 1000),
        ("2E3", 2000),
        (" 42 ", 42),
        ("+7", 7),
        (".5", 1),
        (2.0, 2),
    ],
    ids=str,
)
def test_parse_mib(value: object, mib: int) -> None:
    assert parse_mib(value) == mib


@pytest.mark.parametrize(
    "value",
    ["", "abc", "-5", "3GB", "3 Gi", "1e400", "Gi", None, True, [], float("nan"), "0x10"],
    ids=repr,
)
def test_parse_mib_rejects(value: object) -> None:
    with pytest.raises(QuantityError):
        parse_mib(value)


@given(st.integers(min_value=0, max_value=10**9))
def test_plain_integers_are_mib(n: int) -> None:
    assert parse_mib(str(n)) == n
    assert parse_mib(f"{n}Mi") == n
    assert parse_mib(f"{n}Gi") == n * 1024


@given(st.text(max_size=20))
def test_never_raises_anything_but_quantity_error(text: str) -> None:
    with contextlib.suppress(QuantityError):
        assert parse_mib(text) >= 0


@pytest.mark.parametrize(
    ("mib", "text"), [(0, "0 MiB"), (3000, "3000 MiB"), (10240, "10.0 GiB"), (14000, "13.7 GiB")]
)
def test_format_mib(mib: int, text: str) -> None:
    assert format_mib(mib) == text


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("1" * 5000, id="5000 digits"),
        pytest.param("1" * 4301 + "Mi", id="4301 digits and a suffix"),
        pytest.param("0." + "1" * 5000, id="a 5000 digit fraction"),
        pytest.param(10**5000, id="an int of 5001 digits"),
        pytest.param("1" * 65, id="65 characters"),
    ],
)
def test_overlong_quantities_are_quantity_errors(value: object) -> None:
    """Python refuses to turn more than 4300 digits into an int (a ValueError that used to
    escape as a 500): a quantity is capped at 64 characters first, far above any real one."""
    with pytest.raises(QuantityError, match=r"long|out of range"):
        parse_mib(value)
    if isinstance(value, str):
        with pytest.raises(QuantityError):
            parse_quantity(value)


def test_the_longest_real_quantity_still_parses() -> None:
    assert parse_mib("18446744073709551615.999999999Ki") == 18014398509481984
