"""EMAIL, FN, LN, FI and GEN."""

from __future__ import annotations

import re

from airflow_provider_fbca.identifiers.reasons import (
    EMAIL_INVALID,
    FI_INVALID,
    GEN_UNKNOWN,
    Dropped,
    Normalizer,
)
from airflow_provider_fbca.identifiers.text import clean, is_sha256_hex, letters, missing_or

# An address with one "@", no spaces or separators a list would have, and a dotted domain whose last
# label has at least two characters. Deliberately not RFC 5322: Meta matches mailbox addresses.
_EMAIL = re.compile(r"[^\s@,;:<>()\[\]\\\"]+@(?:[^\s@,;:<>()\[\]\\\".]+\.)+[^\s@,;:<>()\[\]\\\".]{2,}")


def normalize_email(value: object, country: str | None) -> str | Dropped:
    """EMAIL: trimmed, lowercase; what is not an e-mail address is dropped."""
    # clean(value), without a call for the usual ASCII text: e-mails and phones are rarely cached
    text = value.strip() if value.__class__ is str and value.isascii() else clean(value)
    if not text:
        return missing_or(text, EMAIL_INVALID)
    if len(text) == 64 and is_sha256_hex(text):  # the length first: no call for nearly every address
        return text.lower()
    email = text.lower().rstrip(".")  # a sentence's full stop after the address is not part of it
    if _EMAIL.fullmatch(email) is None:
        return EMAIL_INVALID
    return email


_GENDERS = {
    "m": "m",
    "male": "m",
    "man": "m",
    "boy": "m",
    "f": "f",
    "female": "f",
    "woman": "f",
    "girl": "f",
}


def normalize_gender(value: object, country: str | None) -> str | Dropped:
    """GEN: ``m`` or ``f`` from the common spellings; anything else is dropped, never guessed."""
    text = clean(value)
    if not text:
        return missing_or(text, GEN_UNKNOWN)
    if is_sha256_hex(text):
        return text.lower()
    return _GENDERS.get(text.lower().rstrip("."), GEN_UNKNOWN)


def name_normalizer(invalid: Dropped) -> Normalizer:
    """FN, LN: lowercase, letters of any script kept (UTF-8), punctuation, spaces and digits removed."""

    def normalize_name(value: object, country: str | None) -> str | Dropped:
        text = clean(value)
        if not text:
            return missing_or(text, invalid)
        if is_sha256_hex(text):
            return text.lower()
        return letters(text.lower()) or invalid

    return normalize_name


def normalize_first_initial(value: object, country: str | None) -> str | Dropped:
    """FI: the first letter of the value normalized as a first name ("J." and "John" give "j")."""
    text = clean(value)
    if not text:
        return missing_or(text, FI_INVALID)
    if is_sha256_hex(text):
        return text.lower()
    return letters(text.lower())[:1] or FI_INVALID
