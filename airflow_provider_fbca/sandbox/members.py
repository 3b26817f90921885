"""The members of one audience, stored compactly and indexed by their strong identifiers.

A member is one ``bytes`` object: its schema's id and ``\\x1e``, then either

- ``P``, one presence byte per hashed key, the present SHA-256 digests in binary (32 bytes each, half
  their hex), then the unhashed values (EXTERN_ID, MADID, ...) joined by ``\\x1f``; or
- ``T`` and the row as a JSON array, for a row whose values hold the separator (stored exactly).

Each member remembers the population person it matched, if any, so the audience's size is the number
of distinct people its members match (:meth:`MemberStore.matched_people`), not its row count.

A row's bytes depend only on its content, so adding the same person twice changes nothing. Removals
find members through an index keyed by the *hash* of each strong identifier (an int, not the
identifier's text), which keeps the index small; every hit is checked against the member itself. The
index is kept up to date as members are added, so each request costs in proportion to its own rows: a
removal after a large first sync does not pay for indexing the whole audience, which Meta's answers
would not show either.
A batch is packed and indexed with C-level ``map`` calls only: no Python loop per row. A removal reads
only the strong identifiers of the members it finds (:meth:`_Layout.strong_values`), not whole rows; one
whose rows are members as added (each identifier indexing that row's own member alone, the usual case)
reads none, and is found and unindexed with C-level maps too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, repeat
from operator import eq, is_, itemgetter

from airflow_provider_fbca.sandbox.validation import (
    HASHED_KEYS,
    SEPARATOR,
    STRONG_KEYS,
    column_getter,
    is_packable,
)

_SCHEMA_END = b"\x1e"
_PACKED, _TEXT = b"P", b"T"
_DIGEST_SIZE = 32
_Entry = bytes | list[bytes]


@dataclass(frozen=True)
class _Layout:
    """How members of one schema are packed."""

    schema: tuple[str, ...]
    prefix: bytes
    hashed: tuple[int, ...]
    plain: tuple[int, ...]
    strong: tuple[tuple[int, str], ...]
    # Where a packed member whose every hashed key is present holds each strong identifier: (key, offset
    # of its digest in the body) for hashed keys, (key, rank among the plain values) for plain ones.
    strong_digests: tuple[tuple[str, int], ...]
    strong_plain: tuple[tuple[str, int], ...]

    @classmethod
    def build(cls, schema: tuple[str, ...], schema_id: int) -> _Layout:
        hashed = tuple(i for i, key in enumerate(schema) if key in HASHED_KEYS)
        plain = tuple(i for i, key in enumerate(schema) if key not in HASHED_KEYS)
        start = 1 + len(hashed)
        return cls(
            schema=schema,
            prefix=str(schema_id).encode() + _SCHEMA_END,
            hashed=hashed,
            plain=plain,
            strong=tuple((i, key) for i, key in enumerate(schema) if key in STRONG_KEYS),
            strong_digests=tuple(
                (schema[i], start + rank * _DIGEST_SIZE)
                for rank, i in enumerate(hashed)
                if schema[i] in STRONG_KEYS
            ),
            strong_plain=tuple((schema[i], rank) for rank, i in enumerate(plain) if schema[i] in STRONG_KEYS),
        )

    def pack(self, rows: list[list[str]]) -> list[bytes]:
        """Pack rows whose hashed values are all digests or "" (C-level maps only).

        A batch whose every hashed value is present shares one presence pattern, and a lone hashed (or
        plain) column needs no joining: the bytes are the same, with fewer steps per row.
        """
        # A lone digest a row is read as it is; several are read as one tuple a row.
        one = len(self.hashed) == 1
        hashed = [] if one else list(map(column_getter(self.hashed), rows))
        values = list(map(itemgetter(self.hashed[0]), rows)) if one else []
        prefix = self.prefix + _PACKED
        if all(values) if one else all(chain.from_iterable(hashed)):  # every digest present
            prefix += b"\x01" * len(self.hashed)
            parts: list[Iterable[bytes]] = []
        else:
            per_row = zip(values) if one else hashed  # each row's hashed values: one presence byte each
            parts = [map(bytes, map(map, repeat(bool), per_row))]
        parts.append(map(bytes.fromhex, values if one else map("".join, hashed)))
        if len(self.plain) == 1:
            parts.append(map(str.encode, map(itemgetter(self.plain[0]), rows)))
        else:
            parts.append(map(str.encode, map(SEPARATOR.join, map(column_getter(self.plain), rows))))
        return list(map(b"".join, zip(repeat(prefix), *parts)))

    def as_text(self, row: list[str]) -> bytes:
        return self.prefix + _TEXT + json.dumps(row, ensure_ascii=False).encode()

    def unpack(self, body: bytes) -> dict[str, str]:
        """Return the member's values by key (``body`` is what follows the schema id)."""
        if body[:1] == _TEXT:
            return dict(zip(self.schema, json.loads(body[1:].decode()), strict=True))
        values: dict[int, str] = {}
        offset = 1 + len(self.hashed)
        for position, present in zip(self.hashed, body[1:offset], strict=True):
            if present:
                values[position] = body[offset : offset + _DIGEST_SIZE].hex()
                offset += _DIGEST_SIZE
            else:
                values[position] = ""
        plain_values = body[offset:].decode().split(SEPARATOR) if self.plain else []
        values.update(zip(self.plain, plain_values, strict=True))
        return {key: values[i] for i, key in enumerate(self.schema)}

    def strong_values(self, body: bytes) -> dict[str, str]:
        """Return the member's non-empty strong identifiers by key (``body`` is what follows the schema id).

        A packed member with every hashed key present (a batch's usual form) is read at fixed offsets;
        any other is unpacked.
        """
        present = len(self.hashed)
        if body[:1] != _PACKED or body[1 : 1 + present].count(1) != present:
            values = self.unpack(body)
            return {key: values[key] for _, key in self.strong if values[key]}
        found = {key: body[offset : offset + _DIGEST_SIZE].hex() for key, offset in self.strong_digests}
        if self.strong_plain:
            plain_values = body[1 + present + present * _DIGEST_SIZE :].decode().split(SEPARATOR)
            found.update((key, plain_values[rank]) for key, rank in self.strong_plain if plain_values[rank])
        return found


class MemberStore:
    """The members of one audience (or the staged members of a running replace)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._layouts: list[_Layout] = []
        self._layout_ids: dict[tuple[str, ...], int] = {}
        self._members: dict[bytes, None] = {}
        self._index: dict[int, _Entry] = {}
        # member -> the population person it matched; person -> how many members match them
        self._person: dict[bytes, int] = {}
        self._people: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._members)

    def matched_people(self) -> int:
        """How many distinct people of the population the members match."""
        return len(self._people)

    def add(
        self,
        schema: tuple[str, ...],
        rows: list[list[str]],
        packable: list[bool] | None = None,
        people: list[int] | None = None,
    ) -> int:
        """
        Store each row unless an identical member exists; return how many were new.

        :param schema: the canonical schema of the rows.
        :param rows: the rows as lists of text.
        :param packable: per row, whether it packs to binary (digests or "" only, no separator).
        :param people: per row, the population person it matched, or a negative number.
        """
        layout = self._layout(schema)
        members = self._members
        encoded = _encode(layout, rows, packable)
        # A member's bytes are its row's content: rows repeated in the batch are equal, any one will do.
        fresh = dict(zip(encoded, rows, strict=True))
        if not members.keys().isdisjoint(fresh.keys()):  # a C-level pass over the smaller of the two
            fresh = {member: row for member, row in fresh.items() if member not in members}
        members.update(dict.fromkeys(fresh))
        if people is not None and max(people, default=-1) >= 0:
            for member, person in zip(encoded, people, strict=True):
                if person >= 0 and member in fresh and member not in self._person:
                    self._person[member] = person
                    self._people[person] = self._people.get(person, 0) + 1
        for position, key in layout.strong:
            self._index_column(key, list(map(itemgetter(position), fresh.values())), list(fresh))
        return len(fresh)

    def remove(self, schema: tuple[str, ...], rows: list[list[str]]) -> int:
        """
        Delete every member sharing a non-empty strong identifier with a row; return how many went.

        :param schema: the canonical schema of the removal rows.
        :param rows: the removal rows as lists of text (any form: each is checked).
        """
        return self.delete(self.find(schema, rows, [is_packable(schema, row) for row in rows]))

    def find(
        self, schema: tuple[str, ...], rows: list[list[str]], packable: list[bool] | None = None
    ) -> dict[bytes, tuple[int, ...]]:
        """
        Return the members sharing a non-empty strong identifier with a row (what a removal deletes), each
        with the index tokens of its own strong identifiers (what :meth:`delete` unindexes).

        Each strong column is looked up for the whole batch at once (C-level maps); a hit is checked
        against the member's own identifier, since the index holds hashes. A batch removing exactly what
        was added before (each identifier indexing that row's own member alone) is checked in bulk.

        :param schema: the canonical schema of the removal rows.
        :param rows: the removal rows as lists of text.
        :param packable: per row, whether it packs to binary, as :meth:`add` takes it (None: every row).
        """
        layout = self._layout(schema)
        if packable is None or all(packable):
            own = self._find_own_members(layout, rows)
            if own is not None:
                return own
        index, members = self._index, self._members
        found: dict[bytes, tuple[int, ...]] = {}
        for position, key in layout.strong:
            values = list(filter(None, map(itemgetter(position), rows)))  # an empty value finds nobody
            entries = map(index.get, map(hash, zip(repeat(key), values)))  # hash((key, value))
            for value, entry in zip(values, entries, strict=True):
                if entry is None:
                    continue
                for member in [entry] if isinstance(entry, bytes) else entry:
                    if member in found or member not in members:
                        continue
                    strong = self._strong_values(member)
                    if strong.get(key) == value:
                        found[member] = tuple(map(hash, strong.items()))
        return found

    def _find_own_members(
        self, layout: _Layout, rows: list[list[str]]
    ) -> dict[bytes, tuple[int, ...]] | None:
        """
        :meth:`find` for packable rows each of whose strong identifiers is non-empty and indexes that
        row's own member alone (the member the row packs to); None when any row is otherwise, for the
        general path to judge.

        A member equal to the row's packed bytes holds exactly the row's values (packing is one-to-one
        within a layout), so no member needs unpacking, whatever the hashes; and no other member holds
        those identifiers, since the index would then list it beside.
        """
        if not rows or not layout.strong:
            return None
        tokens, entries = [], []
        for position, key in layout.strong:
            values = list(map(itemgetter(position), rows))
            if not all(values):
                return None
            tokens.append(list(map(hash, zip(repeat(key), values))))  # hash((key, value))
            entries.append(list(map(self._index.get, tokens[-1])))
            if None in entries[-1]:  # a row not stored, or a batch removing what it never added
                return None
        encoded = layout.pack(rows)
        if any(column != encoded for column in entries) or not all(map(self._members.__contains__, encoded)):
            return None
        # The stored objects, not their equal copies: deleting them compares identities, not bytes.
        return dict(zip(entries[0], zip(*tokens, strict=True), strict=True))

    def delete(self, victims: dict[bytes, tuple[int, ...]]) -> int:
        """
        Delete members as :meth:`find` returns them; return how many went.

        When each identifier of a victim indexes that victim alone (the usual case), the batch is
        unindexed with C-level maps; otherwise member by member.

        :param victims: members of this store, each with its identifiers' index tokens.
        """
        tokens = list(chain.from_iterable(victims.values()))
        owners = list(chain.from_iterable(map(repeat, victims, map(len, victims.values()))))
        if not all(map(eq, map(self._index.get, tokens), owners)):
            for member, member_tokens in victims.items():
                self._delete(member, member_tokens)
            return len(victims)
        list(map(self._index.pop, tokens, repeat(None)))  # (None: two identifiers of one victim collided)
        list(map(self._members.__delitem__, victims))
        people = map(self._person.pop, victims, repeat(None)) if self._person else ()
        for person in [person for person in people if person is not None]:
            self._forget_person(person)
        return len(victims)

    def matched_people_without(self, members: Iterable[bytes]) -> int:
        """
        How many distinct people the members would match once ``members`` are gone.

        :param members: members, as :meth:`find` returns them.
        """
        lost: dict[int, int] = {}
        for member in members:
            person = self._person.get(member)
            if person is not None:
                lost[person] = lost.get(person, 0) + 1
        gone = sum(1 for person, count in lost.items() if self._people[person] == count)
        return len(self._people) - gone

    def clear(self) -> None:
        """Forget every member."""
        self._reset()

    def rows(self) -> Iterator[dict[str, str]]:
        """Yield every member as ``{KEY: value}``, in the order they were added."""
        for member in self._members:
            yield self._decode(member)

    def groups(self) -> list[tuple[tuple[str, ...], list[list[str]], list[int]]]:
        """Return the members grouped by schema: rows of values and their people (as :meth:`add` takes)."""
        grouped: dict[tuple[str, ...], tuple[list[list[str]], list[int]]] = {}
        for member in self._members:
            values = self._decode(member)
            rows, people = grouped.setdefault(tuple(values), ([], []))
            rows.append(list(values.values()))
            people.append(self._person.get(member, -1))
        return [(schema, rows, people) for schema, (rows, people) in grouped.items()]

    def add_rows(
        self, schema: tuple[str, ...], rows: list[list[str]], people: list[int] | None = None
    ) -> int:
        """
        Store rows that were not validated by this process (a state file), checking each one's form.

        :param schema: the canonical schema.
        :param rows: the rows as lists of text.
        :param people: per row, the person it matched (negative: none).
        """
        return self.add(schema, rows, [is_packable(schema, row) for row in rows], people)

    def _layout(self, schema: tuple[str, ...]) -> _Layout:
        layout_id = self._layout_ids.get(schema)
        if layout_id is None:
            layout_id = self._layout_ids[schema] = len(self._layouts)
            self._layouts.append(_Layout.build(schema, layout_id))
        return self._layouts[layout_id]

    def _decode(self, member: bytes) -> dict[str, str]:
        layout_id, _, body = member.partition(_SCHEMA_END)
        return self._layouts[int(layout_id)].unpack(body)

    def _strong_values(self, member: bytes) -> dict[str, str]:
        layout_id, _, body = member.partition(_SCHEMA_END)
        return self._layouts[int(layout_id)].strong_values(body)

    def _index_column(self, key: str, values: list[str], members: list[bytes]) -> None:
        """Index one strong column of new members (an empty value indexes nothing).

        :param key: the column's key.
        :param values: each new member's value in that column.
        :param members: the new members, in the same order.
        """
        if not all(values):
            kept = [(value, member) for value, member in zip(values, members, strict=True) if value]
            values, members = [value for value, _ in kept], [member for _, member in kept]
        self._fold(list(map(hash, zip(repeat(key), values))), members)  # hash((key, value))

    def _fold(self, tokens: list[int], members: list[bytes]) -> None:
        """Index members by their tokens, in one C-level pass over the index.

        ``setdefault`` gives each free token its member and returns what a taken token holds (a member
        stored before, or one of this batch sharing the identifier): those members are linked beside it.
        """
        taken = list(map(self._index.setdefault, tokens, members))
        if all(map(is_, taken, members)):
            return
        for token, member, entry in zip(tokens, members, taken, strict=True):
            if entry is not member:
                self._link(token, member)

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

    def _delete(self, member: bytes, tokens: tuple[int, ...]) -> None:
        del self._members[member]
        person = self._person.pop(member, None)
        if person is not None:
            self._forget_person(person)
        for token in tokens:
            self._unlink(token, member)

    def _forget_person(self, person: int) -> None:
        """One member less matches ``person``."""
        self._people[person] -= 1
        if not self._people[person]:
            del self._people[person]


def _encode(layout: _Layout, rows: list[list[str]], packable: list[bool] | None) -> list[bytes]:
    """Encode rows: packed in one go when all are packable, else row by row as each allows."""
    if packable is None:
        return layout.pack(rows)
    return [
        layout.pack([row])[0] if ok else layout.as_text(row) for row, ok in zip(rows, packable, strict=True)
    ]
