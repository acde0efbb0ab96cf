"""Amounts of the chain's native coin: parse what users type, format what they read.

Money is integer wei everywhere inside; ``Decimal`` in what users see; never float.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from .errors import UsageError

WEI_PER_UNIT = {
    "wei": 1,
    "kwei": 10**3,
    "mwei": 10**6,
    "gwei": 10**9,
    "szabo": 10**12,
    "finney": 10**15,
    "ether": 10**18,
    "eth": 10**18,
}

_AMOUNT = re.compile(r"^\s*(?P<number>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?P<unit>[a-zA-Z]*)\s*$")


def parse_amount(text: str | int | Decimal, default_unit: str = "ether") -> int:
    """Turn ``0.001``, ``5gwei`` or ``0.001ether`` into integer wei.

    >>> parse_amount("5gwei")
    5000000000
    """
    if isinstance(text, int):
        return text
    if isinstance(text, Decimal):
        number, unit = text, default_unit
    else:
        match = _AMOUNT.match(str(text))
        if not match:
            raise UsageError(
                f"'{text}' is not an amount: write a number with an optional unit, e.g. 0.001, 5gwei or 0.001ether."
            )
        unit = (match["unit"] or default_unit).lower()
        try:
            number = Decimal(match["number"])
        except InvalidOperation as exc:  # pragma: no cover - the regex admits only numbers
            raise UsageError(f"'{text}' is not a number.") from exc
    if unit not in WEI_PER_UNIT:
        known = ", ".join(sorted(WEI_PER_UNIT))
        raise UsageError(f"'{unit}' is not a unit of the native coin: use one of {known}.")
    wei = number * WEI_PER_UNIT[unit]
    if wei != wei.to_integral_value():
        raise UsageError(f"'{text}' is smaller than one wei: give fewer decimal places.")
    if wei < 0:
        raise UsageError(f"'{text}' is negative: an amount must be zero or more.")
    return int(wei)


def wei_to_decimal(wei: int | str | None, unit: str = "ether") -> Decimal:
    """Integer wei to a Decimal in ``unit`` (exact, for DataFrames and summaries)."""
    if wei is None:
        return Decimal(0)
    return Decimal(int(wei)) / Decimal(WEI_PER_UNIT[unit])


def format_amount(wei: int | str | None, symbol: str = "ETH") -> str:
    """Short human text for an amount: ``0.001 ETH``, ``21 gwei`` for small ones."""
    value = int(wei or 0)
    if value == 0:
        return f"0 {symbol}"
    if value < 10**12:
        return f"{_trim(Decimal(value) / Decimal(10**9))} gwei"
    return f"{_trim(Decimal(value) / Decimal(10**18))} {symbol}"


def _trim(value: Decimal) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"
