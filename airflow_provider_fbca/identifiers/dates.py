"""DOBY, DOBM, DOBD, and a whole date of birth read into its three parts."""

from __future__ import annotations

import re
from datetime import date, datetime

from airflow_provider_fbca.identifiers.reasons import (
    DOB_INVALID,
    DOBD_INVALID,
    DOBD_OUT_OF_RANGE,
    DOBM_INVALID,
    DOBM_OUT_OF_RANGE,
    DOBY_INVALID,
    DOBY_OUT_OF_RANGE,
    Dropped,
)
from airflow_provider_fbca.identifiers.text import clean, is_sha256_hex, missing_or


def _birth_year_range() -> range:
    return range(1900, date.today().year + 1)


def normalize_birth_year(value: object, country: str | None) -> str | Dropped:
    """DOBY: four digits, 1900 to the current year."""
    if isinstance(value, date):
        value = value.year
    text = clean(value)
    if not text:
        return missing_or(text, DOBY_INVALID)
    if is_sha256_hex(text):
        return text.lower()
    if not (len(text) == 4 and text.isascii() and text.isdigit()):
        return DOBY_INVALID
    if int(text) not in _birth_year_range():
        return DOBY_OUT_OF_RANGE
    return text


_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}


def _two_digit_number(text: str, upper: int, invalid: Dropped, out_of_range: Dropped) -> str | Dropped:
    """A number 1..``upper`` as two zero-padded digits ("7" and "07" give "07")."""
    if not (text.isascii() and text.isdigit()):
        return invalid
    if len(text.lstrip("0")) > 2:
        return out_of_range
    number = int(text)
    if not 1 <= number <= upper:
        return out_of_range
    return f"{number:02d}"


def normalize_birth_month(value: object, country: str | None) -> str | Dropped:
    """DOBM: ``01``-``12`` from numbers, English month names and three-letter abbreviations."""
    if isinstance(value, date):
        value = value.month
    text = clean(value)
    if not text:
        return missing_or(text, DOBM_INVALID)
    if is_sha256_hex(text):
        return text.lower()
    month = _MONTHS.get(text.lower().rstrip("."))
    if month is not None:
        return f"{month:02d}"
    return _two_digit_number(text, 12, DOBM_INVALID, DOBM_OUT_OF_RANGE)


def normalize_birth_day(value: object, country: str | None) -> str | Dropped:
    """DOBD: ``01``-``31``."""
    if isinstance(value, date):
        value = value.day
    text = clean(value)
    if not text:
        return missing_or(text, DOBD_INVALID)
    if is_sha256_hex(text):
        return text.lower()
    return _two_digit_number(text, 31, DOBD_INVALID, DOBD_OUT_OF_RANGE)


_ISO_DATE = re.compile(r"([0-9]{4})(?:([-/.])([0-9]{1,2})\2([0-9]{1,2})|([0-9]{2})([0-9]{2}))(?:[T ].*)?")
_NO_DATE_OF_BIRTH = ("", "", "")


def date_of_birth_parts(value: object) -> tuple[object, object, object] | Dropped:
    """(year, month, day) of a date, a datetime or a year-first text date; ("", "", "") when missing."""
    if isinstance(value, datetime):
        value = value.date()
    if isinstance(value, date):
        return value.year, value.month, value.day
    text = clean(value)
    if not text:
        return _NO_DATE_OF_BIRTH if text is not None else DOB_INVALID
    parsed = _ISO_DATE.fullmatch(text)
    if parsed is None:  # "02/03/1990" is not guessed: day-first and month-first both exist
        return DOB_INVALID
    year, _, month, day, month_2, day_2 = parsed.groups()
    try:
        born = date(int(year), int(month or month_2), int(day or day_2))
    except ValueError:
        return DOB_INVALID
    return born.year, born.month, born.day
