"""A prepared row as the stage and state tables store it, and the compact text of its wire row."""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import chain
from typing import NamedTuple


class StagedRow(NamedTuple):
    """One prepared model row as the stage table stores it.

    :param row_key: the EXTERN_ID as sent to Meta.
    :param fingerprint: digest of the whole prepared row (schema, identifiers and LOOKALIKE_VALUE).
    :param id_digest: digest of the identifiers only; differs from the stored one when the person must
        first be removed with their previous identifiers.
    :param key_schema: the wire schema, comma-joined (e.g. ``EXTERN_ID,EMAIL,PHONE``).
    :param identifiers: the wire row, as :func:`encode_identifiers` stores it (hashes and unhashed ids).
    :param member: 1 when the row belongs in the audience, 0 when its membership column says it does not.
    :param source_digest: a 64-bit digest of the raw source cells: the next run skips preparing a row
        whose raw cells did not change.
    """

    row_key: str
    fingerprint: str
    id_digest: str
    key_schema: str
    identifiers: str
    member: int
    source_digest: int | None = None


_SEPARATOR = "\x1f"  # ASCII unit separator: never in a hash, an id or a number
_JSON_MARK = "\x1e"  # prefix of the rare rows stored as JSON because a value holds the separator


def encode_identifiers(values: Sequence[str]) -> str:
    """Store a wire row compactly; splitting it back is several times faster than JSON."""
    joined = _SEPARATOR.join(values)
    # One count instead of a scan per value: the hot path of staging a million rows.
    if joined.count(_SEPARATOR) != len(values) - 1 or joined.startswith(_JSON_MARK):
        return _JSON_MARK + json.dumps(list(values), ensure_ascii=False)
    return joined


def encode_identifiers_many(rows: Sequence[Sequence[str]]) -> list[str]:
    """:func:`encode_identifiers` of each row; a batch none of whose values holds the separator or the
    JSON mark (every batch of hashes and ids) is joined in C, checked by two searches of its values."""
    values = "".join(chain.from_iterable(rows))
    if _SEPARATOR not in values and _JSON_MARK not in values:
        return list(map(_SEPARATOR.join, rows))
    return list(map(encode_identifiers, rows))


def decode_identifiers(text: str) -> list[str]:
    """The wire row stored by :func:`encode_identifiers`."""
    if text.startswith(_JSON_MARK):
        return json.loads(text[1:])
    return text.split(_SEPARATOR)


def leading_identifiers(text: str, count: int) -> list[str]:
    """A stored wire row split only as far as its first ``count`` values: the list's first ``count``
    items are those values (fewer when the row has fewer); an item past them is not a value. Cheaper
    than :func:`decode_identifiers` when only the first values are read.

    :param text: the stored row (see :func:`encode_identifiers`).
    :param count: how many values are wanted.
    """
    if text.startswith(_JSON_MARK):
        return json.loads(text[1:])
    return text.split(_SEPARATOR, count)


def stored_as_json_sql(column: str) -> str:
    """PostgreSQL: whether a stored wire row (a SQL column) is stored as JSON (see :func:`encode_identifiers`).

    The code of its first character, an integer: ``left(column, 1)`` made a text of it first, some 30 ms of
    the holders' scan of a million rows (a tenth of its CPU), which asks it of every state row.
    """
    return f"ascii({column}) = {ord(_JSON_MARK)}"


def split_value_sql(column: str, position: str) -> str:
    """PostgreSQL: the value at a 0-based ``position`` (SQL) of a stored wire row not stored as JSON."""
    return f"split_part({column}, chr({ord(_SEPARATOR)}), {position} + 1)"


def _identifier_at(text: str | None, position: int) -> str | None:
    if text is None or position < 0:
        return None
    # Split only up to the wanted value: called once per state row and withheld key of a run.
    values = json.loads(text[1:]) if text.startswith(_JSON_MARK) else text.split(_SEPARATOR, position + 1)
    return values[position] if position < len(values) else None
