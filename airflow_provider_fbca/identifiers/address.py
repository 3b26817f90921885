"""CT, ST, ZIP (US, UK) and COUNTRY, the country lookup, and a row's region."""

from __future__ import annotations

import re

from airflow_provider_fbca import geo
from airflow_provider_fbca.identifiers.reasons import (
    COUNTRY_UNKNOWN,
    CT_INVALID,
    CT_NOT_LATIN,
    ST_UNKNOWN,
    ZIP_INVALID,
    Dropped,
)
from airflow_provider_fbca.identifiers.text import (
    ascii_letters_key,
    clean,
    is_sha256_hex,
    letters,
    missing_or,
)

# Latin letters that Unicode does not decompose into a base letter and a mark.
_UNDECOMPOSED_LATIN = str.maketrans(
    {"ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "\u0131": "i"}
)


def normalize_city(value: object, country: str | None) -> str | Dropped:
    """
    CT: Meta's "a-z only": lowercase, diacritics folded (NFKD, combining marks dropped: "São Paulo"
    gives "saopaulo"), then no spaces, punctuation, digits or other letters. A city written in another
    script only is dropped (``ct.not_latin``): its hash could match nobody.
    """
    text = clean(value)
    if not text:
        return missing_or(text, CT_INVALID)
    if is_sha256_hex(text):
        return text.lower()
    city = ascii_letters_key(text.lower().translate(_UNDECOMPOSED_LATIN))
    if city:
        return city
    return CT_NOT_LATIN if letters(text) else CT_INVALID


def _state_lookup() -> dict[str, str]:
    table: dict[str, str] = {}
    for code, name in geo.US_STATES.items():
        table[ascii_letters_key(code)] = code.lower()
        table[ascii_letters_key(name)] = code.lower()
    for alias, code in geo.US_STATE_ALIASES.items():
        table[ascii_letters_key(alias)] = code.lower()
    return table


_US_STATES = _state_lookup()


def normalize_state(value: object, country: str | None) -> str | Dropped:
    """
    ST: in the US, the two-letter ANSI code ("New York", "newyork", "NY" give "ny"); elsewhere lowercase
    without punctuation or spaces. With no country, a full US state name still becomes its code.
    """
    text = clean(value)
    if not text:
        return missing_or(text, ST_UNKNOWN)
    if is_sha256_hex(text):
        return text.lower()
    if country == "US" or country is None:
        code = _US_STATES.get(ascii_letters_key(text))
        if code is not None:
            return code
        if country == "US":
            return ST_UNKNOWN
    return letters(text.lower(), keep_digits=True) or ST_UNKNOWN


_US_ZIP_PLUS_4 = re.compile(r"([0-9]{3,5})-?[0-9]{4}")


def normalize_zip(value: object, country: str | None) -> str | Dropped:
    """
    ZIP: lowercase without spaces. US: the first five digits, with the leading zeros a number lost put
    back. UK: outward code plus the first digit of the inward code ("SW1A 1AA" gives "sw1a1").
    """
    # Five ASCII digits, as most ZIP columns hold them, are what every country but the UK's keeps: no call.
    five_digits = value.__class__ is str and len(value) == 5 and value.isdigit() and value.isascii()
    if five_digits and country not in geo.UK_POSTCODE_COUNTRIES:
        return value
    text = clean(value)
    if not text:
        return missing_or(text, ZIP_INVALID)
    if is_sha256_hex(text):
        return text.lower()
    compact = "".join(text.split())
    if country in geo.US_ZIP_COUNTRIES:
        return _us_zip(compact)
    if country in geo.UK_POSTCODE_COUNTRIES:
        return _uk_postcode(compact)
    if country is None and len(compact) == 10 and _US_ZIP_PLUS_4.fullmatch(compact):
        return compact[:5]  # ZIP+4 exists only in the US
    return compact.lower()


def _us_zip(compact: str) -> str | Dropped:
    """The five-digit US ZIP of "02134", "2134" (a number that lost its zero), "02134-1234", "021341234"."""
    if compact.isascii() and compact.isdigit():
        if 3 <= len(compact) <= 5:
            return compact.zfill(5)
        if 7 <= len(compact) <= 9:  # ZIP+4 stored as a number
            return compact.zfill(9)[:5]
        return ZIP_INVALID
    plus_4 = _US_ZIP_PLUS_4.fullmatch(compact)
    if plus_4 is not None:
        return plus_4.group(1).zfill(5)
    return ZIP_INVALID


def _uk_postcode(compact: str) -> str | Dropped:
    """Area/District/Sector of a UK postcode: the outward code plus the inward code's first digit."""
    upper = compact.upper()
    full = geo.UK_POSTCODE.fullmatch(upper)
    if full is not None:
        return (full.group(1) + full.group(2)).lower()
    if geo.UK_OUTWARD_CODE.fullmatch(upper):
        return upper.lower()
    return ZIP_INVALID


def _country_lookup() -> dict[str, str]:
    table: dict[str, str] = {}
    for alpha_2, alpha_3, names in geo.ISO_COUNTRIES:
        for spelling in (alpha_2, alpha_3, *names):
            table.setdefault(ascii_letters_key(spelling), alpha_2)
    for alias, alpha_2 in geo.COUNTRY_ALIASES.items():
        table.setdefault(ascii_letters_key(alias), alpha_2)
    return table


_COUNTRIES = _country_lookup()


def country_code(text: str) -> str | None:
    """The upper-case ISO alpha-2 code for a code or English name in any case, or None."""
    key = ascii_letters_key(text)
    code = _COUNTRIES.get(key)
    if code is None and key.startswith("the") and text.lower().startswith("the "):
        code = _COUNTRIES.get(key[3:])  # "The Netherlands", "the Gambia"
    return code


def normalize_country(value: object, country: str | None) -> str | Dropped:
    """COUNTRY: ISO 3166-1 alpha-2, lowercase, from alpha-2 or alpha-3 codes or English names."""
    text = clean(value)
    if not text:
        return missing_or(text, COUNTRY_UNKNOWN)
    if is_sha256_hex(text):
        return text.lower()
    code = country_code(text)
    return code.lower() if code is not None else COUNTRY_UNKNOWN


def region_of(country: str | None) -> str | None:
    """The upper-case ISO alpha-2 code of a country given in any spelling, or None."""
    if country is None:
        return None
    text = clean(country)
    return country_code(text) if text else None
