"""A small SQLite "warehouse" for the demo and the example DAGs' tests.

The customers come from the sandbox's generator, so a known share of them exist in the sandbox's
synthetic population (and therefore match). Around them the warehouse holds the tables the example DAGs
read: orders (value-based and suppression audiences) and audience memberships (Engage-style syncs).
Plain Python and ``sqlite3``: no Airflow import.
"""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_provider_fbca.sandbox import CUSTOMER_COLUMNS

#: The Engage-style segment the membership example syncs.
DEMO_SEGMENT = "high_intent"
#: Share of customers who signed up in the last seven days.
RECENT_SIGNUP_SHARE = 0.08
#: Share of customers who agree to marketing.
CONSENT_SHARE = 0.8

_SCHEMA = """
CREATE TABLE customers (
    external_id TEXT PRIMARY KEY,
    email TEXT, phone TEXT, first_name TEXT, last_name TEXT, city TEXT, state TEXT,
    zip,  -- no type: a ZIP loaded as a number (leading zero lost) stays one, as in many warehouses
    country TEXT, date_of_birth TEXT, gender TEXT,
    signed_up_on TEXT NOT NULL,
    marketing_consent INTEGER NOT NULL
);
CREATE TABLE orders (
    order_id INTEGER PRIMARY KEY,
    external_id TEXT NOT NULL,
    amount REAL NOT NULL,
    ordered_on TEXT NOT NULL
);
CREATE TABLE audience_memberships (
    external_id TEXT NOT NULL,
    segment TEXT NOT NULL,
    in_audience INTEGER NOT NULL,
    PRIMARY KEY (external_id, segment)
);
"""


@dataclass(frozen=True)
class Evolution:
    """What changed in the warehouse between two syncs: how many customers left, arrived, moved e-mail."""

    left: int
    arrived: int
    changed_email: int


def _cell(value: Any) -> Any:
    """A generator value as SQLite stores it: dates as ISO text, other odd types as text."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return str(value)


def _days_ago(days: int) -> str:
    """A date ``days`` before today (UTC), as ISO text: the example DAGs' windows end at the run's date."""
    return (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=days)).isoformat()


def _customer_record(row: Mapping[str, Any], rng: random.Random) -> tuple[Any, ...]:
    # A growing business: about one customer in twelve signed up in the last week.
    signed_up_on = _days_ago(
        rng.randrange(0, 7) if rng.random() < RECENT_SIGNUP_SHARE else rng.randrange(7, 3 * 365)
    )
    consent = int(rng.random() < CONSENT_SHARE)
    return (*(_cell(row.get(column)) for column in CUSTOMER_COLUMNS), signed_up_on, consent)


def _insert_customers(db: sqlite3.Connection, rows: Iterable[Mapping[str, Any]], rng: random.Random) -> None:
    columns = (*CUSTOMER_COLUMNS, "signed_up_on", "marketing_consent")
    db.executemany(
        f"INSERT INTO customers ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        (_customer_record(row, rng) for row in rows),
    )


def _insert_orders(db: sqlite3.Connection, external_ids: Sequence[str], rng: random.Random) -> None:
    """About two customers in three have ordered, one to five times, over the last two years."""
    orders = []
    for external_id in external_ids:
        if rng.random() < 0.35:
            continue
        for _ in range(rng.randint(1, 5)):
            orders.append(
                (external_id, round(rng.lognormvariate(3.5, 0.8), 2), _days_ago(rng.randrange(1, 730)))
            )
    db.executemany("INSERT INTO orders (external_id, amount, ordered_on) VALUES (?, ?, ?)", orders)


def _insert_memberships(db: sqlite3.Connection, external_ids: Sequence[str], rng: random.Random) -> None:
    """Engage-style: the segment tool writes a row per customer it has seen, true while they qualify."""
    db.executemany(
        "INSERT INTO audience_memberships (external_id, segment, in_audience) VALUES (?, ?, ?)",
        ((external_id, DEMO_SEGMENT, int(rng.random() < 0.4)) for external_id in external_ids),
    )


def build_warehouse(path: Path, customers: Sequence[Mapping[str, Any]], *, seed: int = 7) -> None:
    """Create the warehouse at ``path`` (replacing any file there) from the generator's customer rows.

    :param path: the SQLite file to write.
    :param customers: rows of ``generate_customers``.
    :param seed: seeds the derived tables (signup dates, orders, memberships), so runs are repeatable.
    """
    path.unlink(missing_ok=True)
    rng = random.Random(seed)
    external_ids = [str(row["external_id"]) for row in customers]
    with sqlite3.connect(path) as db:
        db.executescript(_SCHEMA)
        _insert_customers(db, customers, rng)
        _insert_orders(db, external_ids, rng)
        _insert_memberships(db, external_ids, rng)
    db.close()


def _changed_email(external_id: str) -> str:
    """A new, valid address for a customer who moved mailbox (messy-cased, like the warehouse's)."""
    return f"New.Mailbox.{external_id}@Example.NET"


def evolve_warehouse(
    path: Path,
    arrivals: Sequence[Mapping[str, Any]],
    *,
    leave: int,
    change_email: int,
    seed: int = 11,
) -> Evolution:
    """Change the customers table the way a week of business does, between two syncs.

    :param path: the warehouse built by :func:`build_warehouse`.
    :param arrivals: new customers' rows (their external ids must not be in the table yet).
    :param leave: how many existing customers to delete.
    :param change_email: how many of the remaining customers get a new e-mail address.
    :param seed: picks who leaves and who moves, repeatably.
    """
    rng = random.Random(seed)
    with sqlite3.connect(path) as db:
        existing = [row[0] for row in db.execute("SELECT external_id FROM customers ORDER BY external_id")]
        chosen = rng.sample(existing, leave + change_email)
        leavers, movers = chosen[:leave], chosen[leave:]
        db.executemany("DELETE FROM customers WHERE external_id = ?", ((key,) for key in leavers))
        db.executemany(
            "UPDATE customers SET email = ? WHERE external_id = ?",
            ((_changed_email(key), key) for key in movers),
        )
        _insert_customers(db, arrivals, rng)
    db.close()
    return Evolution(left=len(leavers), arrived=len(arrivals), changed_email=len(movers))


def count_rows(path: Path, table: str = "customers") -> int:
    """Rows in a warehouse table (the table name is one of this module's own)."""
    with sqlite3.connect(path) as db:
        (count,) = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    db.close()
    return int(count)
