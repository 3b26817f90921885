"""Checks of SyncAudienceOperator's arguments, run when the DAG is parsed (plain Python, no Airflow).

A DAG with a mistake should fail to import, with a message naming the fix, rather than fail at 3 a.m.
after an audience was created.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any


def _is_column_name(value: object) -> bool:
    """A non-empty string without control characters (a column of the query, maybe Jinja)."""
    return (
        isinstance(value, str)
        and bool(value.strip())
        and not any(unicodedata.category(char) == "Cc" for char in value)
    )


def _kind(value: object) -> str:
    """Describe a wrong argument: scalars by their repr (a column name holds no PII), others by type."""
    return repr(value) if isinstance(value, (str, int, float)) else f"a {type(value).__name__}"


def check_mapping(mapping: object, membership_column: object = None) -> dict[str, str]:
    """The mapping as a dict, after checking that every key maps to one column name.

    :param mapping: match key (Meta's name or an alias) -> column of the query.
    :param membership_column: the boolean membership column, or None.
    :raises ValueError: not a mapping, or a value (or the membership column) that is not a column name.
    """
    if not isinstance(mapping, Mapping) or not mapping:
        raise ValueError(
            "mapping must be a non-empty dict of match key -> column of the query, e.g. "
            f"{{'external_id': 'customer_id', 'email': 'email'}}; got {_kind(mapping)}."
        )
    for key, column in mapping.items():
        if not _is_column_name(column):
            raise ValueError(
                f"mapping[{key!r}] must be the name of one column of the query (a non-empty string without "
                f"control characters), not {_kind(column)}. Map each key to one column; combine columns in "
                "the query."
            )
    if membership_column is not None and not _is_column_name(membership_column):
        raise ValueError(
            f"membership_column must be the name of a boolean column of the query, not {_kind(membership_column)}."
        )
    return dict(mapping)


def check_fetch_size(fetch_size: Any) -> None:
    """:raises ValueError: ``fetch_size`` is not a whole number of rows of at least 1."""
    if isinstance(fetch_size, bool) or not isinstance(fetch_size, int) or fetch_size < 1:
        raise ValueError(
            f"fetch_size must be a whole number of rows, at least 1 (default 10000), not {_kind(fetch_size)}."
        )
