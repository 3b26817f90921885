"""Batches of rows: the operator's hot path."""

from __future__ import annotations

import collections
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from airflow_provider_fbca.identifiers.address import normalize_country, region_of
from airflow_provider_fbca.identifiers.dates import date_of_birth_parts
from airflow_provider_fbca.identifiers.ids import normalize_extern_id
from airflow_provider_fbca.identifiers.keys import DATE_OF_BIRTH_ALIASES, DATE_OF_BIRTH_KEYS, match_key
from airflow_provider_fbca.identifiers.processing import PROCESSING_KEYS, usable_processing
from airflow_provider_fbca.identifiers.reasons import (
    ROW_INVALID_PROCESSING,
    ROW_NO_IDENTIFIER,
    ROW_NO_VALUE,
    Dropped,
)
from airflow_provider_fbca.identifiers.text import HEX_DIGITS, SHA256, is_sha256_hex, sha256_hex
from airflow_provider_fbca.identifiers.wire import wire_preparer

# Values of the repetitive keys (names, places, dates, countries) are prepared once per preparer and then
# looked up inline by the row loop; a cache is emptied when it reaches this size, so memory stays bounded
# on any data.
_CACHE_LIMIT = 1 << 14
_REASON_OF_DROP = operator.itemgetter(2)  # of a batch's (row index, wire key, reason)


def _cache_filler(compute: Callable[..., object], cache: dict[object, object]) -> Callable[..., object]:
    """
    What the row loop calls when ``cache`` misses: ``compute(*arguments)``, stored under the lookup key
    (the value alone, or ``(value, region)`` for keys that depend on the row's country).
    """

    def fill(*arguments: object) -> object:
        result = compute(*arguments)
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        # A try, not contextlib.suppress: a column of distinct values (ZIP codes) misses on every row, and
        # entering and leaving a context manager costs ten times the try.
        try:  # noqa: SIM105 (the context manager is what this avoids)
            cache[arguments if len(arguments) > 1 else arguments[0]] = result
        except TypeError:  # an unhashable value (e.g. an array column) is computed, not cached
            pass
        return result

    return fill


def _country_cell(value: object) -> tuple[str | Dropped, str | None]:
    """COUNTRY's cell preparer, which also returns the row's region (upper-case alpha-2) for PHONE, ZIP, ST."""
    normalized = normalize_country(value, None)
    if normalized.__class__ is Dropped or not normalized:
        return normalized, None
    if is_sha256_hex(normalized):  # a hashed country cannot tell PHONE which calling code to use
        return normalized, None
    return sha256_hex(normalized), normalized.upper()


def _date_of_birth_cell() -> Callable[[object], tuple[str | Dropped, ...]]:
    """The date_of_birth pseudo-key's cell preparer: wire values for DOBY, DOBM and DOBD."""
    parts_preparers = tuple(wire_preparer(match_key(name)) for name in DATE_OF_BIRTH_KEYS)

    def date_of_birth_cell(value: object) -> tuple[str | Dropped, ...]:
        parts = date_of_birth_parts(value)
        if parts.__class__ is Dropped:
            return parts, "", ""
        return tuple(prepare(part, None) for prepare, part in zip(parts_preparers, parts, strict=True))

    return date_of_birth_cell


@dataclass
class PreparedBatch:
    """
    What :meth:`RowPreparer.prepare_rows` made of a batch of rows.

    :param rows: wire rows (in the preparer's ``schema`` order) of the kept input rows; "" where missing.
    :param kept: for each wire row, the index of its input row.
    :param rejected: indices of the input rows rejected.
    :param dropped: reason -> count of dropped values (``"email.invalid"``, ``"gen.unknown"``, ...).
    :param rejected_by_reason: reason -> count of rejected rows (``"row.no_identifier"``, ``"row.no_value"``).
    :param dropped_at: ``(input row index, wire key, reason)`` of each dropped value, in row order.
    :param rejected_reasons: the reason of each rejected row, in the order of ``rejected``.
    """

    rows: list[tuple[str, ...]] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)
    rejected_by_reason: collections.Counter[str] = field(default_factory=collections.Counter)
    dropped_at: list[tuple[int, str, str]] = field(default_factory=list)
    rejected_reasons: list[str] = field(default_factory=list)

    def count_reasons(self) -> PreparedBatch:
        """Fill :attr:`dropped` and :attr:`rejected_by_reason` from the per-row lists (counted in C)."""
        self.dropped.update(map(_REASON_OF_DROP, self.dropped_at))
        self.rejected_by_reason.update(self.rejected_reasons)
        return self


@dataclass(frozen=True)
class _Column:
    """
    One input column: its cell preparer and the wire keys it fills.

    :param takes_region: whether the preparer is called ``(value, region)`` rather than ``(value)``.
    :param cached: whether the loop looks the wire values up by value (and region) before preparing.
    :param hashes: whether the loop hashes what the preparer returns (a hashed key that is not cached).
    """

    wire_keys: tuple[str, ...]
    preparer: Callable
    takes_region: bool = False
    cached: bool = False
    hashes: bool = False
    is_country: bool = False
    is_identifier: bool = True


class RowPreparer:
    """
    Prepares whole rows for the wire; compiled once per mapping, it is the operator's hot path.

    The row's COUNTRY (when mapped and usable) drives PHONE, ZIP and ST, otherwise ``default_country``.
    A row is rejected when no identifier but EXTERN_ID survived (``row.no_identifier``; with only
    EXTERN_ID mapped, when that is missing), or when LOOKALIKE_VALUE is mapped and unusable
    (``row.no_value``). Bad values are dropped and counted, never raised.

    :param keys: Meta key names or aliases, in the order of the input rows' columns; ``date_of_birth``
        (alias ``dob``) takes a date and fills DOBY, DOBM and DOBD.
    :param default_country: the country of rows without a usable COUNTRY (ISO code or English name).
    :raises ValueError: for an unknown key, a key mapped twice, or an unknown default country.
    """

    def __init__(self, keys: Sequence[str], *, default_country: str | None = None) -> None:
        #: What builds an identical preparer (in a worker process, :mod:`airflow_provider_fbca.sync.worker`).
        self.arguments: tuple[tuple[str, ...], str | None] = (tuple(keys), default_country)
        self._columns = tuple(_column(key) for key in keys)
        self.schema: tuple[str, ...] = tuple(name for column in self._columns for name in column.wire_keys)
        if not self.schema:
            raise ValueError("RowPreparer needs at least one match key.")
        duplicates = sorted({name for name in self.schema if self.schema.count(name) > 1})
        if duplicates:
            raise ValueError(f"Match keys mapped more than once: {', '.join(duplicates)}.")
        self._default_region = region_of(default_country) if default_country is not None else None
        if default_country is not None and self._default_region is None:
            raise ValueError(f"Unknown default_country {default_country!r}: use an ISO 3166-1 code.")
        self._run = _compile_row_loop(self._columns)

    @property
    def default_country(self) -> str | None:
        """The default country as lowercase ISO alpha-2 (how COUNTRY is sent), or None."""
        return self._default_region.lower() if self._default_region else None

    def column_of(self, key_name: str) -> int:
        """
        The index of the input column that fills Meta key ``key_name`` (``date_of_birth`` fills three).

        :param key_name: a Meta key name as in :attr:`schema`, e.g. ``"EXTERN_ID"``.
        :raises ValueError: when no column fills that key.
        """
        for index, column in enumerate(self._columns):
            if key_name in column.wire_keys:
                return index
        raise ValueError(f"No column is mapped to {key_name}.")

    def prepare_rows(self, rows: Iterable[Sequence[object]]) -> PreparedBatch:
        """
        Wire rows for ``rows``, with the counts of values dropped and rows rejected.

        :param rows: sequences with one value per key given to the constructor, in that order.
        """
        batch = PreparedBatch()
        self._run(
            rows,
            self._default_region,
            batch.rows,
            batch.kept,
            batch.rejected,
            batch.dropped_at,
            batch.rejected_reasons,
        )
        return batch.count_reasons()


def _column(key: str) -> _Column:
    if str(key).strip().lower() in DATE_OF_BIRTH_ALIASES:
        return _Column(DATE_OF_BIRTH_KEYS, _date_of_birth_cell(), cached=True)
    spec = match_key(key)
    if spec.name == "COUNTRY":
        return _Column((spec.name,), _country_cell, cached=True, is_country=True)
    if not spec.repetitive:  # e-mails, phones, ids: mostly distinct, normalized row by row
        return _Column(
            (spec.name,),
            spec.normalizer,
            takes_region=True,
            hashes=spec.hashed,
            is_identifier=spec.identifier,
        )
    prepare_cell = wire_preparer(spec)
    if spec.uses_country:
        return _Column((spec.name,), prepare_cell, takes_region=True, cached=True)
    return _Column(
        (spec.name,), lambda value: prepare_cell(value, None), cached=True, is_identifier=spec.identifier
    )


def _compile_row_loop(columns: Sequence[_Column]) -> Callable[..., None]:
    """
    The per-row loop for these columns, generated as Python source and compiled once.

    Specializing the loop to the mapping (no inner loop over columns, no per-value dispatch) is what
    makes preparation faster than the SDK's plain hashing loop; ``collections.namedtuple`` and
    ``dataclasses`` generate code the same way.
    """
    namespace: dict[str, object] = {
        "Dropped": Dropped,
        "usable_processing": usable_processing,
        "sha256": SHA256,
        "HEX_DIGITS": HEX_DIGITS,
    }
    body: list[str] = []
    outputs: dict[str, str] = {}  # wire key -> variable
    identifiers: list[str] = []
    for position, column in sorted(enumerate(columns), key=lambda item: not item[1].is_country):
        names = [f"v{position}_{index}" for index in range(len(column.wire_keys))]
        body += _cell_lines(position, column, names, namespace)
        for name, wire_key in zip(names, column.wire_keys, strict=True):
            body += [
                f"if {name}.__class__ is Dropped:",
                f"    drop((index, {wire_key!r}, {name}.reason))",
                f"    {name} = ''",
            ]
            if wire_key in PROCESSING_KEYS:  # never sent without its options: the row goes instead
                body.append("    processing_dropped = True")
            if column.hashes:  # as wire_preparer does, inline: a value already a digest passes as is
                body += [
                    f"elif {name} and (len({name}) != 64 or {name}.strip(HEX_DIGITS)):",
                    f"    {name} = sha256({name}.encode()).hexdigest()",
                ]
        outputs.update(zip(column.wire_keys, names, strict=True))
        if column.is_identifier:
            identifiers += names
    if not identifiers:  # only EXTERN_ID (and LOOKALIKE_VALUE) mapped: a valid removal schema
        identifiers = [outputs[key] for key in outputs if key == "EXTERN_ID"]
    if "COUNTRY" not in outputs:
        body.insert(0, "region = default_region")
    processing = [outputs.get(key, "''") for key in PROCESSING_KEYS]
    if processing != ["''"] * len(PROCESSING_KEYS):
        body.insert(0, "processing_dropped = False")
    body += [
        f"if not ({' or '.join(identifiers) or 'False'}):",
        "    rejected_append(index)",
        f"    reject({ROW_NO_IDENTIFIER!r})",
        "    continue",
    ]
    if "LOOKALIKE_VALUE" in outputs:
        body += [
            f"if not {outputs['LOOKALIKE_VALUE']}:",
            "    rejected_append(index)",
            f"    reject({ROW_NO_VALUE!r})",
            "    continue",
        ]
    if processing != ["''"] * len(PROCESSING_KEYS):
        body += [
            f"if processing_dropped or not usable_processing({', '.join(processing)}):",
            "    rejected_append(index)",
            f"    reject({ROW_INVALID_PROCESSING!r})",
            "    continue",
        ]
    wire_row = ", ".join(outputs[key] for column in columns for key in column.wire_keys)
    body += [f"wire_append(({wire_row},))", "kept_append(index)"]
    source = "\n".join(
        [
            "def run(rows, default_region, wire_rows, kept, rejected, dropped_at, rejected_reasons):",
            "    wire_append, kept_append = wire_rows.append, kept.append",
            "    rejected_append, drop, reject = rejected.append, dropped_at.append, rejected_reasons.append",
            "    for index, row in enumerate(rows):",
            *(f"        {line}" for line in body),
        ]
    )
    exec(compile(source, "<airflow_provider_fbca.identifiers.batch.RowPreparer>", "exec"), namespace)
    return namespace["run"]  # type: ignore[return-value]


def _cell_lines(position: int, column: _Column, names: list[str], namespace: dict[str, object]) -> list[str]:
    """
    The loop's lines that set ``names`` (and ``region``, for COUNTRY) from ``row[position]``.

    A cached column is a dict lookup inline (``dict.get``, the only call): the mapping's repetitive keys
    are most of its columns. A miss (or an unhashable value) calls the filler, which prepares the value
    and stores it.
    """
    value = f"row[{position}], region" if column.takes_region else f"row[{position}]"
    targets = f"{names[0]}, region" if column.is_country else ", ".join(names)
    if column.cached:
        cache: dict[object, object] = {}
        namespace[f"cached_{position}"] = cache.get
        namespace[f"fill_{position}"] = _cache_filler(column.preparer, cache)
        # A miss is get's None (no preparer returns None), not a KeyError: raising and catching one costs
        # several lookups, and a column of distinct values (ZIP codes, cities) misses on most rows.
        found = "found" if len(names) > 1 or column.is_country else names[0]  # unpacked after the lookup
        lines = [
            "try:",
            f"    {found} = cached_{position}(({value}))",
            "except TypeError:",
            f"    {found} = None",
            f"if {found} is None:",
            f"    {found} = fill_{position}({value})",
        ]
        if found != targets:
            lines.append(f"{targets} = found")
    elif column.preparer is normalize_extern_id:  # a text cell is only trimmed: inline, no call a row
        namespace[f"cell_{position}"] = column.preparer
        lines = [
            f"{targets} = row[{position}]",
            f"{targets} = {targets}.strip() if {targets}.__class__ is str else cell_{position}({value})",
        ]
    else:
        namespace[f"cell_{position}"] = column.preparer
        lines = [f"{targets} = cell_{position}({value})"]
    if column.is_country:
        lines.append("if region is None: region = default_region")
    return lines


def prepare_rows(
    keys: Sequence[str], rows: Iterable[Sequence[object]], default_country: str | None = None
) -> PreparedBatch:
    """
    Convenience wrapper: ``RowPreparer(keys, default_country=...).prepare_rows(rows)``.

    :param keys: Meta key names or aliases, in the order of the rows' columns.
    :param rows: sequences with one value per key.
    :param default_country: the country of rows without a usable COUNTRY.
    """
    return RowPreparer(keys, default_country=default_country).prepare_rows(rows)
