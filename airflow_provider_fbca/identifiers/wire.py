"""One value at a time, in wire form: normalized, then hashed for hashed keys."""

from __future__ import annotations

from airflow_provider_fbca.identifiers.address import region_of
from airflow_provider_fbca.identifiers.keys import MatchKey, match_key
from airflow_provider_fbca.identifiers.reasons import Dropped, Normalizer
from airflow_provider_fbca.identifiers.text import HEX_DIGITS, SHA256, is_sha256_hex, sha256_hex


def normalize_with_reason(key: str, value: object, *, country: str | None = None) -> tuple[str, str | None]:
    """
    The normalized value and, when it was dropped, why.

    :param key: Meta's key name or an alias.
    :param value: the value as a database driver returns it.
    :param country: the row's country (ISO alpha-2 in any case, or any spelling COUNTRY accepts).
    :return: ``(normalized, None)``, ``("", None)`` for a missing value, or ``("", reason)``.
    """
    result = match_key(key).normalizer(value, region_of(country))
    if result.__class__ is Dropped:
        return "", result.reason
    return result, None


def normalize(key: str, value: object, *, country: str | None = None) -> str:
    """
    The value normalized by Meta's rules for ``key``: "" when missing or not a usable identifier.

    A hashed key's value that already is a SHA-256 hex digest comes back lowercased.

    :param key: Meta's key name or an alias.
    :param value: the value as a database driver returns it (str, int, float, Decimal, date, bytes, None).
    :param country: the row's country; drives PHONE, ZIP and ST.
    """
    return normalize_with_reason(key, value, country=country)[0]


def prepare(key: str, value: object, *, country: str | None = None) -> str:
    """
    Exactly what goes on the wire for ``key``: the SHA-256 hex of the normalized value for hashed keys
    (a value already hashed passes through lowercased), the normalized value for the others, "" when
    missing or unusable.

    :param key: Meta's key name or an alias.
    :param value: the value as a database driver returns it.
    :param country: the row's country; drives PHONE, ZIP and ST.
    """
    spec = match_key(key)
    normalized = normalize(spec.name, value, country=country)
    return _to_wire(normalized) if spec.hashed else normalized


def _to_wire(normalized: str) -> str:
    """The wire form of a hashed key's normalized value ("" stays "", a digest passes through)."""
    if not normalized or is_sha256_hex(normalized):
        return normalized
    return sha256_hex(normalized)


def wire_preparer(spec: MatchKey) -> Normalizer:
    """``(value, region) -> wire value | Dropped`` for one key: normalized, hashed if the key is hashed."""
    normalizer = spec.normalizer
    if not spec.hashed:
        return normalizer

    def prepare_cell(value: object, region: str | None) -> str | Dropped:
        normalized = normalizer(value, region)
        if normalized.__class__ is Dropped or not normalized:
            return normalized
        if len(normalized) == 64 and not normalized.strip(HEX_DIGITS):
            return normalized  # already a digest (lowercased by the normalizer)
        return SHA256(normalized.encode()).hexdigest()

    return prepare_cell
