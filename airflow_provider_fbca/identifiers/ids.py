"""Keys Meta takes as given, never hashed: EXTERN_ID, MADID, APPUID, PAGEUID, LOOKALIKE_VALUE."""

from __future__ import annotations

import re
import uuid
from decimal import Decimal, InvalidOperation

from airflow_provider_fbca.identifiers.reasons import (
    EXTERN_ID_INVALID,
    LOOKALIKE_VALUE_INVALID,
    LOOKALIKE_VALUE_NEGATIVE,
    MADID_INVALID,
    Dropped,
    Normalizer,
)
from airflow_provider_fbca.identifiers.text import (
    HEX_DIGITS,
    as_text,
    clean,
    decimal_text,
    is_sha256_hex,
    missing_or,
)


def normalize_extern_id(value: object, country: str | None) -> str | Dropped:
    """EXTERN_ID: trimmed, otherwise exactly as given (no case folding, no Unicode normalization)."""
    text = value if value.__class__ is str else as_text(value)
    if text is None:
        return EXTERN_ID_INVALID
    return text.strip()


def opaque_id_normalizer(reason: Dropped) -> Normalizer:
    """APPUID, PAGEUID: ids Meta issued, sent as given (trimmed), never hashed."""

    def normalize_id(value: object, country: str | None) -> str | Dropped:
        text = clean(value)
        return text if text is not None else reason

    return normalize_id


# Meta's rule is only "lowercase, keep hyphens", and its own example is no hex UUID: any id of ASCII
# letters, digits and hyphens is taken, from the shortest ids platforms issue to twice a UUID's length.
_MADID = re.compile(r"[0-9A-Za-z-]{8,64}")


def normalize_madid(value: object, country: str | None) -> str | Dropped:
    """
    MADID: a mobile advertising id (IDFA, Android advertising id, ...), lowercase, hyphens kept, never
    hashed; a UUID written without hyphens or in braces gets its usual form. The all-zero id (what iOS
    reports when the user limits ad tracking) and hashes are dropped: they match nobody.
    """
    text = clean(value)
    if not text:
        return missing_or(text, MADID_INVALID)
    if text[0] == "{" and text[-1] == "}":  # a GUID as Windows writes it
        text = text[1:-1]
    if _MADID.fullmatch(text) is None or is_sha256_hex(text) or not text.strip("0-"):
        return MADID_INVALID
    if len(text) == 32 and not text.strip(HEX_DIGITS):
        return str(uuid.UUID(text))
    return text.lower()


def normalize_lookalike_value(value: object, country: str | None) -> str | Dropped:
    """LOOKALIKE_VALUE: a non-negative number, written without exponent or trailing zeros."""
    if isinstance(value, bool):
        return LOOKALIKE_VALUE_INVALID
    text = clean(value)
    if not text:
        return missing_or(text, LOOKALIKE_VALUE_INVALID)
    try:
        number = Decimal(text)
    except InvalidOperation:
        return LOOKALIKE_VALUE_INVALID
    if not number.is_finite():
        return LOOKALIKE_VALUE_INVALID
    if number < 0:
        return LOOKALIKE_VALUE_NEGATIVE
    if number.adjusted() > _MAX_LOOKALIKE_VALUE_DIGITS:
        return LOOKALIKE_VALUE_INVALID
    return decimal_text(number)


_MAX_LOOKALIKE_VALUE_DIGITS = 18  # a customer value above 10**18 is a data error, not a big spender
