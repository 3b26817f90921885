"""The names of the state table and its companion tables, checked before anything is created.

Every companion table is named ``<state_table><suffix>``; a name is a plain SQL identifier (optionally
``schema.table``) that fits PostgreSQL's limit with each suffix, so no table is truncated into another's name.
"""

from __future__ import annotations

import re

_SQL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: PostgreSQL truncates longer identifiers; refuse them rather than collide silently.
MAX_NAME_LENGTH = 63
SESSIONS_SUFFIX = "_sessions"
LOCKS_SUFFIX = "_locks"
PAGES_SUFFIX = "_pages"
OWED_SUFFIX = "_owed"
REFRESH_SUFFIX = "_refresh"
LAYOUT_SUFFIX = "_layout"
REMOVALS_SUFFIX = "_removals"  # the removal ledger of partitioned runs (see .removal_budget)
NAMES_SUFFIX = "_names"  # the audience each audience_name resolved to (see .audience_names)
LOOKS_SUFFIX = "_looks"  # the second looks a partition's removals owe (see .second_look)
#: Every companion table is named ``<state_table><suffix>``: a state table name must fit with each.
STATE_TABLE_SUFFIXES = (
    "",
    SESSIONS_SUFFIX,
    LOCKS_SUFFIX,
    PAGES_SUFFIX,
    OWED_SUFFIX,
    REFRESH_SUFFIX,
    LAYOUT_SUFFIX,
    REMOVALS_SUFFIX,
    NAMES_SUFFIX,
    LOOKS_SUFFIX,
)


def quote_table_name(name: str, suffix: str = "") -> str:
    """Validate a table name (``table`` or ``schema.table``) and return it double-quoted for SQL.

    :param name: the table name as configured by the user.
    :param suffix: appended to the table part before validation (e.g. ``_sessions``).
    :raises ValueError: when a part is not a plain SQL identifier or is too long.
    """
    parts = name.split(".")
    if len(parts) > 2:
        raise ValueError(f"State table name {name!r} has more than one dot; use 'table' or 'schema.table'.")
    parts[-1] += suffix
    for part in parts:
        # fullmatch: with match, "$" lets a trailing newline through.
        if not _SQL_NAME.fullmatch(part) or len(part) > MAX_NAME_LENGTH:
            raise ValueError(
                f"State table name {name!r} is not a plain SQL identifier (letters, digits and underscores, "
                f"not starting with a digit, at most {MAX_NAME_LENGTH - len(suffix)} characters)."
            )
    return ".".join(f'"{part}"' for part in parts)


def check_state_table(name: object) -> None:
    """Refuse a state table name that it or one of its companion tables could not be created under.

    :param name: the ``state_table`` as configured (checked at DAG parse time).
    :raises ValueError: not a string, not a plain SQL identifier, or too long once a suffix is appended.
    """
    if not isinstance(name, str):
        raise ValueError(
            f"state_table must be a string ('table' or 'schema.table'), not {type(name).__name__}."
        )
    for suffix in STATE_TABLE_SUFFIXES:
        quote_table_name(name, suffix)
