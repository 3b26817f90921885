"""Driver values to text: NFC and trimming, letters of any script, SHA-256 detection and hashing."""

from __future__ import annotations

import hashlib
import math
import unicodedata
from datetime import date, datetime
from decimal import Decimal

from airflow_provider_fbca.identifiers.reasons import Dropped

HEX_DIGITS = "0123456789abcdefABCDEF"


def _builtin_sha256() -> type:
    """CPython's own SHA-256 (module ``_sha2`` since 3.12, ``_sha256`` before), else hashlib's (OpenSSL).

    The digest is the same; the built-in one costs a fifth less on values as short as identifiers, where
    setting up OpenSSL's context costs more than hashing (a million rows hash three or four values each).
    """
    for module, name in (("_sha2", "sha256"), ("_sha256", "sha256")):
        try:
            return getattr(__import__(module), name)  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            continue
    return hashlib.sha256  # type: ignore[return-value]


#: SHA-256 as the hot path calls it: ``SHA256(data).hexdigest()``.
SHA256 = _builtin_sha256()


def is_sha256_hex(text: str) -> bool:
    """Whether ``text`` already is a SHA-256 hex digest (64 hex characters, any case)."""
    return len(text) == 64 and not text.strip(HEX_DIGITS)


def sha256_hex(text: str) -> str:
    """The wire form of a hashed key: SHA-256 of the UTF-8 bytes, 64 lowercase hex characters."""
    return SHA256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------
# Typed values from database drivers -> text
# ---------------------------------------------------------------------------------------------------

# Invisible characters that copy-pasted data carries at the ends of values; str.strip() keeps them.
_INVISIBLE_EDGES = "\u200b\u200e\u200f\u2060\ufeff"


def as_text(value: object) -> str | None:
    """
    The text of a typed value: "" when it is missing, None when it cannot be read as text.

    Integral floats and Decimals lose their ".0" (12345.0 is "12345"); NaN (how pandas spells a missing
    value) is missing; infinities and undecodable bytes are unusable.

    :param value: a value as a database driver returns it.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        try:
            return str(int(value))
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            return None
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if math.isinf(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, Decimal):
        if value.is_nan():
            return ""
        if value.is_infinite():
            return None
        return decimal_text(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return str(value)


def decimal_text(value: Decimal) -> str:
    """A finite Decimal as plain digits, without exponent or trailing zeros ("44.50" is "44.5")."""
    if not value:
        return "0"  # also for Decimal("-0") and "0E-7"
    return format(value.normalize(), "f")


def clean(value: object) -> str | None:
    """
    Text as every key sees it first: Unicode NFC, then trimmed. "" when missing, None when unusable.

    :param value: a value as a database driver returns it.
    """
    text = value if value.__class__ is str else as_text(value)
    if not text:
        return text
    if text.isascii():
        return text.strip()
    return unicodedata.normalize("NFC", text).strip().strip(_INVISIBLE_EDGES).strip()


def missing_or(text: str | None, dropped: Dropped) -> str | Dropped:
    """For an empty ``clean`` result: "" when the value was missing, ``dropped`` when it was unusable."""
    return "" if text is not None else dropped


def letters(text: str, *, keep_digits: bool = False) -> str:
    """
    Only the letters of ``text`` (any script, with their combining marks), and digits if asked.

    Removes spaces, punctuation and symbols; the caller lowercases.
    """
    if text.isascii():
        if text.isalpha() or (keep_digits and text.isalnum()):
            return text
        return "".join(ch for ch in text if ch.isalpha() or (keep_digits and ch.isdigit()))
    return "".join(
        ch
        for ch in text
        if ch.isalpha()
        or unicodedata.category(ch)[0] == "M"
        or (keep_digits and unicodedata.category(ch) == "Nd")
    )


def ascii_letters_key(text: str) -> str:
    """A lookup key for names in tables: accents folded, lowercase a-z only ("Côte d'Ivoire" -> "cotedivoire")."""
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in text.lower() if "a" <= ch <= "z")
