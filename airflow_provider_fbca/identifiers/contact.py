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
_ADDRESS_CHARACTER = r"[^\s@,;:<>()\[\]\\\"]"  # neither part holds "@": it splits them
_LABEL_CHARACTER = r"[^\s@,;:<>()\[\]\\\".]"
_EMAIL = re.compile(rf"{_ADDRESS_CHARACTER}+@(?:{_LABEL_CHARACTER}+\.)+{_LABEL_CHARACTER}{{2,}}")
_LOCAL_PART = re.compile(rf"{_ADDRESS_CHARACTER}+")
_DOMAIN = re.compile(rf"(?:{_LABEL_CHARACTER}+\.)+{_LABEL_CHARACTER}{{2,}}")
#: The ASCII characters an address refuses, from its pattern: deleting them from an ASCII local part (one C
#: pass) tells it faster than the pattern does.
_NOT_ADDRESS_ASCII = bytes(code for code in range(128) if not re.fullmatch(_ADDRESS_CHARACTER, chr(code)))
# Domains repeat (a few providers hold most addresses): each is checked once, in a bounded cache.
_DOMAIN_CACHE_LIMIT = 1 << 12
_known_domains: dict[str, bool] = {}


def normalize_email(value: object, country: str | None) -> str | Dropped:
    """EMAIL: trimmed, lowercase; what is not an e-mail address is dropped."""
    # clean(value), without a call for the usual ASCII text: e-mails and phones are rarely cached
    text = value.strip() if value.__class__ is str and value.isascii() else clean(value)
    if not text:
        return missing_or(text, EMAIL_INVALID)
    if len(text) == 64 and is_sha256_hex(text):  # the length first: no call for nearly every address
        return text.lower()
    email = text.lower().rstrip(".")  # a sentence's full stop after the address is not part of it
    # _EMAIL.fullmatch(email) in two parts: neither holds "@", so the first "@" is the one between them
    local_part, _, domain = email.partition("@")
    valid_domain = _known_domains.get(domain)
    if valid_domain is None:
        valid_domain = _check_domain(domain)
    if not valid_domain or not local_part:
        return EMAIL_INVALID
    if local_part.isascii():
        ascii_part = local_part.encode()
        valid_local = len(ascii_part.translate(None, _NOT_ADDRESS_ASCII)) == len(ascii_part)
    else:
        valid_local = _LOCAL_PART.fullmatch(local_part) is not None
    return email if valid_local else EMAIL_INVALID


def _check_domain(domain: str) -> bool:
    """Whether ``domain`` is an address's domain, remembered (the cache is emptied when full)."""
    if len(_known_domains) >= _DOMAIN_CACHE_LIMIT:
        _known_domains.clear()
    valid = _known_domains[domain] = _DOMAIN.fullmatch(domain) is not None
    return valid


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
