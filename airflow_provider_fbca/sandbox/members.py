"""The members of one audience, stored compactly and indexed by their strong identifiers.

A member is one ``bytes`` object: the id of its schema, ``\\x1e``, then its values joined by ``\\x1f``
(exactly as uploaded). Identical uploads map to the same bytes, so adding a person twice changes
nothing. Removals find members through an index keyed by the *hash* of each strong identifier (an int,
not the identifier's text), which keeps the index small; every hit is checked against the member itself.
"""

from __future__ import annotations

from collections.abc import Iterator

from airflow_provider_fbca.sandbox.validation import SEPARATOR, STRONG_KEYS

_SCHEMA_END = b"\x1e"
_Entry = bytes | list[bytes]


class MemberStore:
    """The members of one audience (or the staged members of a running replace)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._schemas: list[tuple[str, ...]] = []
        self._schema_ids: dict[tuple[str, ...], int] = {}
        self._members: dict[bytes, None] = {}
        self._index: dict[int, _Entry] = {}

    def __len__(self) -> int:
        return len(self._members)

    def add(self, schema: tuple[str, ...], rows: list[list[str]], joined_rows: list[str]) -> int:
        """
        Store each row unless an identical member exists; return how many were new.

        :param schema: the canonical schema of the rows.
        :param rows: the rows as lists of text.
        :param joined_rows: the same rows joined by the separator (see :mod:`.validation`).
        """
        prefix = self._schema_prefix(schema)
        members = self._members
        fresh: dict[bytes, list[str]] = {}
        for member, row in zip(map(prefix.__add__, map(str.encode, joined_rows)), rows, strict=True):
            if member not in members:
                fresh.setdefault(member, row)
        members.update(dict.fromkeys(fresh))
        for position, key in _strong_columns(schema):
            self._index_column(
                key, [(row[position], member) for member, row in fresh.items() if row[position]]
            )
        return len(fresh)

    def _index_column(self, key: str, pairs: list[tuple[str, bytes]]) -> None:
        """Index one strong column of new members: in one C-level update when no token is taken yet."""
        tokens = [hash((key, value)) for value, _ in pairs]
        if len(set(tokens)) == len(tokens) and self._index.keys().isdisjoint(tokens):
            self._index.update(zip(tokens, [member for _, member in pairs], strict=True))
            return
        for token, (_, member) in zip(tokens, pairs, strict=True):
            self._link(token, member)

    def remove(self, schema: tuple[str, ...], rows: list[list[str]]) -> int:
        """
        Delete every member sharing a non-empty strong identifier with a row; return how many went.

        :param schema: the canonical schema of the removal rows.
        :param rows: the removal rows as lists of text.
        """
        strong = _strong_columns(schema)
        removed = 0
        for row in rows:
            for position, key in strong:
                value = row[position]
                entry = self._index.get(hash((key, value))) if value else None
                if entry is None:
                    continue
                for member in [entry] if isinstance(entry, bytes) else list(entry):
                    if member in self._members and self._decode(member).get(key) == value:
                        self._delete(member)
                        removed += 1
        return removed

    def clear(self) -> None:
        """Forget every member."""
        self._reset()

    def rows(self) -> Iterator[dict[str, str]]:
        """Yield every member as ``{KEY: value}``, in the order they were added."""
        for member in self._members:
            yield self._decode(member)

    def groups(self) -> list[tuple[tuple[str, ...], list[str]]]:
        """Return the members grouped by schema, each row joined (what :meth:`add` takes back)."""
        grouped: dict[int, list[str]] = {}
        for member in self._members:
            schema_id, _, joined = member.partition(_SCHEMA_END)
            grouped.setdefault(int(schema_id), []).append(joined.decode())
        return [(self._schemas[schema_id], rows) for schema_id, rows in grouped.items()]

    def _schema_prefix(self, schema: tuple[str, ...]) -> bytes:
        schema_id = self._schema_ids.get(schema)
        if schema_id is None:
            schema_id = self._schema_ids[schema] = len(self._schemas)
            self._schemas.append(schema)
        return str(schema_id).encode() + _SCHEMA_END

    def _decode(self, member: bytes) -> dict[str, str]:
        schema_id, _, joined = member.partition(_SCHEMA_END)
        return dict(zip(self._schemas[int(schema_id)], joined.decode().split(SEPARATOR), strict=True))

    def _link(self, token: int, member: bytes) -> None:
        entry = self._index.get(token)
        if entry is None:
            self._index[token] = member
        elif isinstance(entry, bytes):
            self._index[token] = [entry, member]
        else:
            entry.append(member)

    def _unlink(self, token: int, member: bytes) -> None:
        entry = self._index.get(token)
        if entry is None:
            return
        if isinstance(entry, bytes):
            if entry == member:
                del self._index[token]
            return
        if member in entry:
            entry.remove(member)
        if len(entry) == 1:
            self._index[token] = entry[0]

    def _delete(self, member: bytes) -> None:
        del self._members[member]
        for key, value in self._decode(member).items():
            if key in STRONG_KEYS and value:
                self._unlink(hash((key, value)), member)


_STRONG_COLUMNS: dict[tuple[str, ...], list[tuple[int, str]]] = {}


def _strong_columns(schema: tuple[str, ...]) -> list[tuple[int, str]]:
    columns = _STRONG_COLUMNS.get(schema)
    if columns is None:
        columns = _STRONG_COLUMNS[schema] = [(i, key) for i, key in enumerate(schema) if key in STRONG_KEYS]
    return columns
