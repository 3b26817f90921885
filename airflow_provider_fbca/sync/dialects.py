"""SQL spellings per warehouse dialect: the few expressions the sync asks the database to compute.

One entry per dialect, data only, so that a warehouse is added by one entry. What the sync needs:

- ``text``: a cell as text (``{expr}``), the same text for the same value, so digests are stable;
- ``type_name``: the cell's type as text, so that an int column becoming a text column changes the digest
  (the identifiers module may prepare ``5`` and ``'5'`` differently, so the row must be prepared again);
- ``length``: the length of a text in characters (the encoding is length-prefixed, so no separator
  inside a value can make two rows encode alike);
- ``digest64``: a signed 64-bit integer digest of a text (``{text}``), the source digest of a row;
- ``partition_hash``: a non-negative integer hash of a column (``{column}``), stable across runs and
  machines, for partitioning a model as ``WHERE <partition_hash> % N = k``.

PostgreSQL and SQLite are implemented and tested. SQLite has no hash function: the sync registers
deterministic functions on the connection (:func:`register_functions`); its row digest hashes one text
SQLite builds in C per row (:data:`SQLITE_ROW_TEXT`), not the cells one by one. Snowflake, BigQuery,
Redshift and Databricks are designed, untested: their entries follow each vendor's documented functions,
and no test runs them.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: The names of the functions registered on SQLite connections (see :func:`register_functions`).
SQLITE_DIGEST_FUNCTION = "fbca_digest64"
SQLITE_ROW_DIGEST_FUNCTION = "fbca_row_digest"
#: What SQLite's row digest hashes: one JSON array its C code builds per row, the seed first, then each
#: cell: a text as a JSON string, any other value as an object holding its SQL literal (``quote()``: exact
#: for a REAL, which JSON would round to 15 digits, and the one way a BLOB goes into JSON). ``5``, ``'5'``,
#: ``5.0``, NULL and ``'NULL'`` all encode apart. One argument per row instead of one per cell (converting
#: the cells into Python objects was most of the digest's cost), handed over as its UTF-8 bytes (a BLOB:
#: no text decoded only to be encoded again). The cell's test is a searched CASE: the same text as
#: ``CASE typeof(x) WHEN 'text' ...`` (the digests stay), in a third less of SQLite's CPU per cell.
SQLITE_ROW_TEXT = "CAST(json_array({seed}, {columns}) AS BLOB)"
SQLITE_ROW_CELL = "CASE WHEN typeof({expr}) = 'text' THEN {expr} ELSE json_object('q', quote({expr})) END"


@dataclass(frozen=True)
class Dialect:
    """How one warehouse spells the expressions of a pushdown diff (templates for ``str.format``).

    :param name: the dialect's name, as :func:`dialect_for` returns it.
    :param tested: whether the test suite runs this dialect (else "designed, untested").
    :param text: a cell as text; ``{expr}``.
    :param type_name: the cell's type as text; ``{expr}``.
    :param length: the character length of a text; ``{expr}``.
    :param concat: joins texts; ``{parts}`` is the comma-separated list of texts, ``{parts_pipe}`` the
        ``||``-joined one.
    :param digest64: a signed 64-bit digest of a text; ``{text}``.
    :param partition_hash: a non-negative integer hash of a column; ``{column}``.
    :param row_function: a function computing a row's digest at once (``{seed}``, ``{columns}``), used
        instead of the encoding of :func:`cell_encoding` and ``digest64``; None for the encoding.
    :param row_cell: what ``row_function`` receives of each cell (``{expr}``; ``{type}``: the cell's
        ``cell_type``; ``{cell_seed}``: a text of the seed, the cell's position and its type), joined by
        ``row_join``.
    :param row_join: what joins the cells of ``row_function``'s ``{columns}``.
    :param cell_type: an expression of a cell's type (``{expr}``) that ``row_cell`` digests: the same on
        every row of a query, so :meth:`row_digest` takes its values when read once (:func:`cell_types`)
        and inlines them as literals (the digest is the same: a literal's text is the value's); None when
        ``row_cell`` has no ``{type}``.
    :param fence: appended to a subquery so that the database computes its columns once per row rather
        than inlining them into the outer query, which would compute a row's digest once per use (in the
        join with the state and again in the result); empty when the dialect needs none.
    """

    name: str
    tested: bool
    text: str
    type_name: str
    length: str
    concat: str
    digest64: str
    partition_hash: str
    row_function: str | None = None
    row_cell: str = "{expr}"
    row_join: str = ", "
    cell_type: str | None = None
    fence: str = ""

    def row_digest(self, columns: Sequence[str], seed: str, types: Sequence[str] | None = None) -> str:
        """A signed 64-bit digest of a row's cells (plus a seed), computed by the database.

        :param columns: the cells' SQL expressions, in a fixed order.
        :param seed: what else changes the rows' preparation (mapping, default country); a literal.
        :param types: each column's ``cell_type`` as :func:`cell_types` read it; None: computed per row.
        """
        if self.row_function is not None:
            if types is None:
                types = [(self.cell_type or "").format(expr=column) for column in columns]
                cell_seeds = [
                    f"({quote_literal(f'{seed}|{position}|')} || CAST({type_} AS TEXT))"
                    for position, type_ in enumerate(types)
                ]
            else:
                cell_seeds = [
                    quote_literal(f"{seed}|{position}|{value}") for position, value in enumerate(types)
                ]
                types = [quote_literal(str(value)) for value in types]
            cells = self.row_join.join(
                self.row_cell.format(expr=column, type=type_, cell_seed=cell_seed)
                for column, type_, cell_seed in zip(columns, types, cell_seeds, strict=True)
            )
            return self.row_function.format(seed=quote_literal(seed), columns=cells)
        parts = [quote_literal(seed)]
        for column in columns:
            parts += ["'|'", cell_encoding(self, column)]
        return self.digest64.format(text=concat(self, parts))


DIALECTS: dict[str, Dialect] = {
    dialect.name: dialect
    for dialect in (
        Dialect(
            name="postgresql",
            tested=True,
            text="CAST({expr} AS TEXT)",
            # The type's oid, not its name: naming a type looks it up per cell (a third of the digest's cost).
            type_name="pg_typeof({expr})::oid",
            length="length({expr})",
            concat="concat({parts})",
            # The first 64 bits of the MD5, as a signed bigint (a bit(64) casts to bigint two's-complement).
            digest64="('x' || substr(md5({text}), 1, 16))::bit(64)::bigint",
            partition_hash="(hashtextextended(CAST({column} AS TEXT), 0) & 9223372036854775807)",
            # A row's digest: each cell's text hashed to 64 bits by the hash PostgreSQL partitions by
            # (stable across its versions), seeded by the run's seed, the cell's position and its type
            # oid (a NULL hashes that seed alone), the cells' hashes XORed. Each seed is a constant the
            # planner folds once per query, so a row costs one hash per cell over the cell's own bytes:
            # a third of the CPU of hashing the row's quote_nullable() texts joined (the bulk of a
            # 1%-changed run's diff). Bytes, not the column's collation: a case-insensitive collation
            # would hash "A" as "a".
            row_function="({columns})",
            row_cell=(
                'COALESCE(hashtextextended(CAST({expr} AS TEXT) COLLATE "C", hashtextextended({cell_seed}, 0)),'
                " hashtextextended({cell_seed} || ':null', 0))"
            ),
            row_join=" # ",
            # Read once per query: computed per row, the type is a third of the digest's cost.
            cell_type="pg_typeof({expr})::oid",
            fence=" OFFSET 0",
        ),
        Dialect(
            name="sqlite",
            tested=True,
            text="CAST({expr} AS TEXT)",
            type_name="typeof({expr})",
            length="length({expr})",
            concat="({parts_pipe})",
            digest64=SQLITE_DIGEST_FUNCTION + "({text})",
            partition_hash="(" + SQLITE_DIGEST_FUNCTION + "(CAST({column} AS TEXT)) & 9223372036854775807)",
            row_function=f"{SQLITE_ROW_DIGEST_FUNCTION}({SQLITE_ROW_TEXT})",
            row_cell=SQLITE_ROW_CELL,
            # A subquery with a LIMIT is not flattened into a join: it runs as a co-routine.
            fence=" LIMIT -1",
        ),
        # Designed, untested: no test runs these entries.
        Dialect(
            name="snowflake",
            tested=False,
            text="TO_VARCHAR({expr})",
            type_name="TYPEOF(TO_VARIANT({expr}))",
            length="LENGTH({expr})",
            concat="CONCAT({parts})",
            digest64="TO_NUMBER(SUBSTR(MD5({text}), 1, 16), 'XXXXXXXXXXXXXXXX') - 9223372036854775808",
            partition_hash="ABS(HASH(TO_VARCHAR({column})))",
        ),
        Dialect(
            name="bigquery",
            tested=False,
            text="CAST({expr} AS STRING)",
            type_name="'any'",  # BigQuery has no typeof: a type change re-prepares through the state instead
            length="LENGTH({expr})",
            concat="CONCAT({parts})",
            digest64="FARM_FINGERPRINT({text})",
            partition_hash="ABS(MOD(FARM_FINGERPRINT(CAST({column} AS STRING)), 9223372036854775807))",
        ),
        Dialect(
            name="redshift",
            tested=False,
            text="CAST({expr} AS VARCHAR(65535))",
            type_name="'any'",  # no pg_typeof on Redshift's compute nodes
            length="LEN({expr})",
            concat="({parts_pipe})",
            digest64="STRTOL(SUBSTRING(MD5({text}), 1, 15), 16)",
            partition_hash="STRTOL(SUBSTRING(MD5(CAST({column} AS VARCHAR(65535))), 1, 15), 16)",
        ),
        Dialect(
            name="databricks",
            tested=False,
            text="CAST({expr} AS STRING)",
            type_name="typeof({expr})",
            length="char_length({expr})",
            concat="concat({parts})",
            digest64="xxhash64({text})",
            partition_hash="pmod(xxhash64(CAST({column} AS STRING)), 9223372036854775807)",
        ),
    )
}


def cell_types(conn: Any, dialect: Dialect, sql: str, columns: Sequence[str]) -> list[str] | None:
    """Each column's ``cell_type`` in a query, read once without running it (None: the dialect has none).

    A query of no row gives no value: its columns are read from a row that an outer join of no row pads
    with NULLs, which keep their column's type. Ends the transaction the read opened.

    :param conn: an open DB-API connection.
    :param dialect: the connection's dialect.
    :param sql: the query.
    :param columns: its columns' SQL expressions (quoted names).
    """
    if dialect.cell_type is None:
        return None
    probes = ", ".join(dialect.cell_type.format(expr=column) for column in columns)
    cursor = conn.cursor()
    try:
        cursor.execute(
            f"SELECT {probes} FROM (SELECT 1 AS fbca_one) AS fbca_one"
            f" LEFT JOIN (SELECT * FROM ({sql}) AS fbca_query LIMIT 0) AS fbca_model ON TRUE"
        )
        row = cursor.fetchone()
    finally:
        cursor.close()
    conn.rollback()
    return [str(value) for value in row]


def dialect_for(conn: Any) -> Dialect | None:
    """The dialect of an open DB-API connection, or None when the sync knows no spelling for it.

    Only the tested dialects are recognized from a driver; the others are chosen by name
    (:data:`DIALECTS`), once a test runs them.

    :param conn: an open DB-API connection.
    """
    module = type(conn).__module__
    if module.startswith("psycopg"):
        return DIALECTS["postgresql"]
    if module.startswith("sqlite3"):
        return DIALECTS["sqlite"]
    return None


def concat(dialect: Dialect, parts: Sequence[str]) -> str:
    """Join SQL texts with the dialect's concatenation (a function or ``||``)."""
    return dialect.concat.format(parts=", ".join(parts), parts_pipe=" || ".join(parts))


def cell_encoding(dialect: Dialect, expr: str) -> str:
    """A NULL-safe, type-tagged, length-prefixed text of one cell: ``N`` or ``<type>:<length>:<text>``.

    NULL and the empty text, ``5`` and ``'5'``, ``'a:b'`` and two cells ``'a'``, ``'b'`` all encode apart.

    :param dialect: the warehouse's dialect.
    :param expr: the cell's SQL expression (a quoted column name).
    """
    text = dialect.text.format(expr=expr)
    length = dialect.text.format(expr=dialect.length.format(expr=text))
    tagged = concat(dialect, [dialect.type_name.format(expr=expr), "':'", length, "':'", text])
    return f"CASE WHEN {expr} IS NULL THEN 'N' ELSE {tagged} END"


def partition_hash(dialect: Dialect, column: str) -> str:
    """A non-negative integer hash of a column, stable across runs: ``WHERE <this> % N = k``.

    :param dialect: the warehouse's dialect.
    :param column: the column's SQL expression.
    """
    return dialect.partition_hash.format(column=column)


def quote_literal(text: str) -> str:
    """A SQL string literal (quotes doubled; the sync's seeds hold no backslash escapes)."""
    return "'" + text.replace("'", "''") + "'"


def quote_name(name: str) -> str:
    """A double-quoted SQL identifier (quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def digest64(text: str | None) -> int | None:
    """The 64-bit digest PostgreSQL's ``digest64`` spelling computes: MD5's first 8 bytes, signed.

    Registered as SQLite's deterministic ``fbca_digest64`` so that both tested dialects agree.

    :param text: the encoded row (None stays None, as SQL functions do with NULL).
    """
    if text is None:
        return None
    return int.from_bytes(
        hashlib.md5(text.encode("utf-8", "surrogatepass"), usedforsecurity=False).digest()[:8],
        "big",
        signed=True,
    )


def client_row_digest(seed: str, cells: Sequence[Any]) -> int:
    """The digest of a row's source cells as the client computes it (no pushdown), signed 64-bit.

    Not SQLite's (:func:`text_digest` of a text SQLite builds): a sync switching between the client-side
    diff and the pushdown prepares its rows once more, which sends nothing (their identifiers are the
    state's: :func:`.plan.record_source_digests` records the new digests).

    BLAKE2b (8 bytes) of the seed followed by ``repr`` of the cells' tuple: NULL-safe (``None``) and typed
    (``5`` and ``'5'`` differ). The seed's part of the hash is computed once per seed (:func:`_seed_hash`)
    and copied per row: hashing is a stream, so the digest is that of the concatenation, as before.

    :param seed: what else changes the rows' preparation (mapping, default country).
    :param cells: the row's cells as the driver returns them.
    """
    state = _seed_hash(seed).copy()
    state.update(repr(tuple(cells)).encode("utf-8", "surrogatepass"))
    return int.from_bytes(state.digest(), "big", signed=True)


@functools.lru_cache(maxsize=16)
def _seed_hash(seed: str) -> Any:
    """The BLAKE2b state after the seed (a run has one seed; a few runs may share a process)."""
    return hashlib.blake2b(seed.encode("utf-8", "surrogatepass"), digest_size=8)


def text_digest(text: bytes) -> int:
    """The digest of a row's text (:data:`SQLITE_ROW_TEXT`, seed included): BLAKE2b (8 bytes) of its UTF-8
    bytes, signed 64-bit. Registered as SQLite's row digest: the one place it is computed.

    :param text: the row's text, UTF-8 encoded.
    """
    state = BLAKE2B_8.copy()  # cheaper than setting up BLAKE2b's parameters per row; the same digest
    state.update(text)
    return int.from_bytes(state.digest(), "big", signed=True)


#: BLAKE2b of 8 bytes before any data, copied per row digest (see :func:`text_digest`, and
#: :meth:`.pushdown.KnownDigests.fresh`, which hashes a row's text as it does).
BLAKE2B_8 = hashlib.blake2b(digest_size=8)


def register_functions(conn: Any) -> None:
    """Register the functions the SQLite dialect calls on a sqlite3 connection (once per connection).

    :param conn: an open sqlite3 connection.
    """
    _check_sqlite_json(conn)
    conn.create_function(SQLITE_DIGEST_FUNCTION, 1, digest64, deterministic=True)
    conn.create_function(SQLITE_ROW_DIGEST_FUNCTION, 1, text_digest, deterministic=True)


def _check_sqlite_json(conn: Any) -> None:
    """Refuse, naming the fix, a SQLite built without its JSON functions (the row digest's text needs them).

    :param conn: an open sqlite3 connection.
    """
    try:
        conn.execute("SELECT json_array(1)").fetchone()
    except Exception as error:  # sqlite3.OperationalError: no such function
        raise RuntimeError(
            "This SQLite library has no JSON functions (json_array), which the sync's row digest needs: "
            "use a SQLite 3.38 or newer, or one built with JSON1 (Python's own builds are)."
        ) from error
