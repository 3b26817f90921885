"""State stores on real SQLite and PostgreSQL connections, and a recording audience client."""

from __future__ import annotations

import sqlite3
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_fbca.sync.state import StateStore


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    """A state store in a fresh table, on SQLite and on the suite's PostgreSQL server."""
    table = f"state_{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":
        conn = sqlite3.connect(tmp_path / "state.db")
        yield StateStore(conn, table, "?")
    else:
        import psycopg

        server = request.getfixturevalue("postgres_server")
        conn = psycopg.connect(
            host=server["host"], port=server["port"], user=server["user"], dbname=server["dbname"]
        )
        yield StateStore(conn, table, "%s")
    conn.close()


@dataclass
class PassThroughBatch:
    rows: list[tuple[str, ...]]
    kept: list[int]
    rejected: list[int] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    rejected_by_reason: Counter[str] = field(default_factory=Counter)


class PassThroughPreparer:
    """Wire rows equal to the input (already 'prepared'), to test planning apart from normalization."""

    def __init__(self, schema: Sequence[str]) -> None:
        self.schema = tuple(schema)

    def prepare_rows(self, rows: Sequence[Sequence[Any]]) -> PassThroughBatch:
        return PassThroughBatch([tuple(str(v) for v in row) for row in rows], list(range(len(rows))))


class RecordingAudience:
    """Keeps members by EXTERN_ID (the first column) and records every call's kind, size and session.

    ``before_add``, when set, runs before each addition (in the upload thread): it may stall (move an
    injected clock) or fail it.
    """

    def __init__(self) -> None:
        self.members: dict[str, tuple[str, ...]] = {}
        self.calls: list[tuple[str, list[str], int, dict[str, Any]]] = []
        self.before_add: Callable[[], None] | None = None

    def kill_after(self, calls: int | None) -> None:
        """Fail every addition once ``calls`` calls were made (a killed worker); None heals it."""

        def fail() -> None:
            if calls is not None and len(self.calls) >= calls:
                raise ConnectionError("killed")

        self.before_add = fail

    def _record(self, kind: str, schema: Sequence[str], data: Sequence[Sequence[str]], session: Any) -> dict:
        self.calls.append((kind, list(schema), len(data), dict(session)))
        return {"num_received": len(data), "num_invalid_entries": 0}

    def add_users(self, audience_id: str, schema: Any, data: Any, session: Any = None, **_: Any) -> dict:
        if self.before_add is not None:
            self.before_add()
        self.members.update((row[0], tuple(row)) for row in data)
        return self._record("add", schema, data, session)

    def remove_users(self, audience_id: str, schema: Any, data: Any, session: Any = None, **_: Any) -> dict:
        for row in data:
            self.members.pop(row[0], None)
        return self._record("remove", schema, data, session)

    def replace_users(self, audience_id: str, schema: Any, data: Any, session: Any = None, **_: Any) -> dict:
        if session["batch_seq"] == 1:
            self.members.clear()
        self.members.update((row[0], tuple(row)) for row in data)
        return self._record("replace", schema, data, session)
