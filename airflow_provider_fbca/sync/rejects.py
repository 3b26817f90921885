"""Rejects the user can query: which rows lost which match key, and why, next to the state.

Counts by reason say *that* values were dropped; fixing them upstream needs *which* rows. A run records,
per sync and per EXTERN_ID, each match key dropped (``PHONE``, ``phone.no_country_code``) and each row
rejected (``ROW``, ``row.no_identifier``) in ``<state_table>_rejects``. The table holds reasons and keys,
never a value. A row fixed upstream leaves it on the next run that prepares it again; the table never
holds more than ``max_rejects_recorded`` entries per sync, so a model of junk rows cannot flood it.

Plain Python over the state store's DB-API connection (SQLite, PostgreSQL); no Airflow import.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from airflow_provider_fbca.identifiers import match_key
from airflow_provider_fbca.sync.row_key import CONTROL_CHARACTER, MISSING, TOO_LONG
from airflow_provider_fbca.sync.state import StateStore, quote_table_name, utc_now

log = logging.getLogger(__name__)

REJECTS_SUFFIX = "_rejects"
#: Entries kept per sync: enough to list every reject of a real customer file, while a model of 10M
#: junk rows writes 100,000 rows, not 10M, per run.
DEFAULT_MAX_REJECTS_RECORDED = 100_000
#: The match key of an entry about a whole row (its rejection), rather than one of its values.
ROW = "ROW"
#: Why a prepared row is rejected for having no EXTERN_ID; such rows are counted, never listed.
MISSING_KEY_REASON = MISSING

#: What fixes each reason, shown for the largest one in the report and the log.
FIX_HINTS: Mapping[str, str] = {
    "extern_id.invalid": "store EXTERN_ID as text or integers (some cells are unreadable bytes)",
    MISSING_KEY_REASON: "give every row an EXTERN_ID (the sync keys its state on it)",
    TOO_LONG: "EXTERN_IDs must be customer ids of at most 1,000 characters",
    CONTROL_CHARACTER: "remove control characters (NUL, tabs, line breaks) from the EXTERN_ID column",
    "email.invalid": "clean the e-mail column upstream (some values are not addresses)",
    "phone.invalid": "check the phone column: numbers too short, too long or all zeros",
    "phone.no_country_code": "set default_country or map COUNTRY",
    "gen.unknown": "map a gender column holding m/f (male/female, man/woman)",
    "doby.invalid": "birth years must be four digits",
    "doby.out_of_range": "birth years must be 1900 to this year",
    "dobm.invalid": "birth months must be 1-12 or English month names",
    "dobm.out_of_range": "birth months must be 1-12",
    "dobd.invalid": "birth days must be 1-31",
    "dobd.out_of_range": "birth days must be 1-31",
    "dob.invalid": "give dates of birth as dates or YYYY-MM-DD text (day-first texts are not guessed)",
    "ln.invalid": "last names must hold letters",
    "fn.invalid": "first names must hold letters",
    "fi.invalid": "first initials must be letters",
    "ct.invalid": "cities must hold letters",
    "ct.not_latin": "map a romanized city column: Meta matches cities in a-z only",
    "st.unknown": "give US states as names or two-letter codes (or fix the row's COUNTRY)",
    "zip.invalid": "check the ZIP column of US and UK rows (or the row's COUNTRY)",
    "country.unknown": "give COUNTRY as ISO 3166 codes or English names",
    "madid.invalid": "MADIDs are 8-64 letters, digits and hyphens, not hashed and not all zeros",
    "appuid.invalid": "store app user ids as text or integers",
    "pageuid.invalid": "store page-scoped user ids as text or integers",
    "lookalike_value.invalid": "values must be numbers below 10^18",
    "lookalike_value.negative": "values must not be negative",
    "row.no_identifier": "map more match keys, or fix the values dropped above (see the rejects table)",
    "row.no_value": "give every row of a value-based audience a LOOKALIKE_VALUE",
    "data_processing_options.invalid": 'data processing options must be ["LDU"] or [] (none)',
    "data_processing_options_country.invalid": "with LDU, the country must be 1 (US) or 0 (geolocated)",
    "data_processing_options_state.invalid": "with LDU, the state must be 1000 (California) or 0 (geolocated)",
    "row.invalid_data_processing_options": "with LDU, give country/state 1/1000 (California) or 0/0 (geolocated)",
}


def fix_hint(counts: Mapping[str, int]) -> str | None:
    """
    The hint that fixes the most frequent reason, e.g. ``phone.no_country_code: 87 -> set
    default_country or map COUNTRY``; None when nothing was dropped or rejected.

    :param counts: reason -> count (dropped values and rejected rows together).
    """
    present = [(count, reason) for reason, count in counts.items() if count > 0]
    if not present:
        return None
    count, reason = min(present, key=lambda item: (-item[0], item[1]))
    return f"{reason}: {count} -> {FIX_HINTS.get(reason, 'see the mapping reference in the README')}"


class RejectsTable:
    """
    ``<state_table>_rejects`` for one sync run: call :meth:`start`, then :meth:`record` per prepared
    batch, then :meth:`finish`.

    :param store: the state store; the table lives on its connection, next to the state.
    :param sync_key: the sync (ad account + audience), as in the state table.
    :param key_column: the index of the EXTERN_ID cell in the rows given to :meth:`record`.
    :param run_label: names this run in ``last_seen_run`` (Airflow's run id, or a timestamp).
    :param max_recorded: at most this many entries are kept for the sync.
    :param forget_absent: whether the model is the whole audience (mirror mode), so that a rejected row
        absent from it is gone rather than merely not read.
    :param now: the current time as text (tests inject one).
    """

    def __init__(
        self,
        store: StateStore,
        sync_key: str,
        *,
        key_column: int,
        run_label: str,
        max_recorded: int = DEFAULT_MAX_REJECTS_RECORDED,
        forget_absent: bool = False,
        now: Callable[[], str] = utc_now,
    ) -> None:
        check_max_rejects_recorded(max_recorded)
        self.store = store
        self.sync_key = sync_key
        self.table_name = f"{store.table_name}{REJECTS_SUFFIX}"
        self.table = quote_table_name(store.table_name, REJECTS_SUFFIX)
        self.key_column = key_column
        self.run_label = run_label
        self.max_recorded = max_recorded
        self.forget_absent = forget_absent
        self.now = now
        self._extern_id = match_key("EXTERN_ID").normalizer
        self._first_seen: dict[tuple[str, str, str], str] = {}
        self._entries_per_key: Counter[str] = Counter()
        self._prepared_again: set[str] = set()
        self._recorded: set[tuple[str, str, str]] = set()
        self._count = 0
        self.not_recorded = 0

    def start(self) -> None:
        """Create the table on first use and read what earlier runs recorded for this sync."""
        self.store.lock_table_creation()  # concurrent first runs (partitions) would collide in the catalog
        self.store.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            " sync_key VARCHAR(255) NOT NULL,"
            " extern_id TEXT NOT NULL,"
            " match_key VARCHAR(40) NOT NULL,"
            " reason VARCHAR(60) NOT NULL,"
            " first_seen VARCHAR(40) NOT NULL,"
            " last_seen_run VARCHAR(255) NOT NULL,"
            " PRIMARY KEY (sync_key, extern_id, match_key, reason))"
        ).close()
        self.store.commit()
        for extern_id, key, reason, first_seen in self.store.fetch_all(
            f"SELECT extern_id, match_key, reason, first_seen FROM {self.table} WHERE sync_key = ?",
            (self.sync_key,),
        ):
            self._first_seen[extern_id, key, reason] = first_seen
            self._entries_per_key[extern_id] += 1
        self._count = len(self._first_seen)

    @property
    def recorded(self) -> int:
        """How many entries this run wrote."""
        return len(self._recorded)

    def record(self, rows: Sequence[Sequence[Any]], prepared: Any) -> None:
        """
        Replace the entries of the rows prepared in this batch with what they lost now.

        :param rows: the rows given to the preparer (EXTERN_ID at ``key_column``).
        :param prepared: the preparer's result (an ``identifiers.PreparedBatch``).
        """
        lost: dict[int, list[tuple[str, str]]] = {}
        for index, key_name, reason in prepared.dropped_at:
            lost.setdefault(index, []).append((key_name, reason))
        for index, reason in zip(prepared.rejected, prepared.rejected_reasons, strict=True):
            lost.setdefault(index, []).append((ROW, reason))
        self._forget(self._keys_recorded_before(rows))
        entries = []
        for index, losses in lost.items():
            extern_id = self._key(rows[index])
            if extern_id:  # a row without EXTERN_ID is counted, but cannot be named
                entries += [(extern_id, key_name, reason) for key_name, reason in losses]
        self._insert(entries)

    def finish(self) -> None:
        """Forget the rejected rows a whole model no longer holds, commit, and say when capped."""
        if self.forget_absent:
            gone = [key for key in self._entries_per_key if key not in self._prepared_again]
            self.store.executemany(
                f"DELETE FROM {self.table} WHERE sync_key = ? AND extern_id = ? AND match_key = ?",
                [(self.sync_key, key, ROW) for key in gone],
            )
        self.store.commit()
        if self.not_recorded:
            log.warning(
                "The rejects table %s is full (max_rejects_recorded=%d): %d rejects of this run were "
                "counted but not recorded. Fix the largest reason first, or raise max_rejects_recorded.",
                self.table_name,
                self.max_recorded,
                self.not_recorded,
            )

    def move_to(self, sync_key: str) -> None:
        """
        File this run's entries under ``sync_key``: the audience was created, and its sync key is final.

        :param sync_key: the created audience's sync key.
        """
        self.store.execute(
            f"UPDATE {self.table} SET sync_key = ? WHERE sync_key = ?", (sync_key, self.sync_key)
        ).close()
        self.sync_key = sync_key

    def summary(self) -> dict[str, Any]:
        """What the report says about the table."""
        return {
            "rejects_table": self.table_name,
            "rejects_recorded": self.recorded,
            "rejects_not_recorded": self.not_recorded,
        }

    def _key(self, row: Sequence[Any]) -> str:
        key = self._extern_id(row[self.key_column], None)
        return key if key.__class__ is str else ""

    def _keys_recorded_before(self, rows: Iterable[Sequence[Any]]) -> list[str]:
        """The EXTERN_IDs of ``rows`` that earlier runs left entries for, each once per run."""
        if not self._entries_per_key:
            return []
        again = []
        for row in rows:
            key = self._key(row)
            if key in self._entries_per_key and key not in self._prepared_again:
                self._prepared_again.add(key)
                again.append(key)
        return again

    def _forget(self, keys: list[str]) -> None:
        self.store.executemany(
            f"DELETE FROM {self.table} WHERE sync_key = ? AND extern_id = ?",
            [(self.sync_key, key) for key in keys],
        )
        for key in keys:
            self._count -= self._entries_per_key[key]
            self._entries_per_key[key] = 0

    def _insert(self, entries: list[tuple[str, str, str]]) -> None:
        now = self.now()
        rows = []
        for entry in entries:
            if entry in self._recorded:  # the same key twice in the model: the duplicate check reports it
                continue
            if self._count >= self.max_recorded:
                self.not_recorded += 1
                continue
            self._recorded.add(entry)
            self._count += 1
            rows.append((self.sync_key, *entry, self._first_seen.get(entry, now), self.run_label))
        self.store.executemany(
            f"INSERT INTO {self.table} (sync_key, extern_id, match_key, reason, first_seen, last_seen_run)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )


def check_max_rejects_recorded(value: object) -> None:
    """
    :raises ValueError: unless ``value`` is a whole number of at least 0 (0 records nothing).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"max_rejects_recorded must be a whole number of at least 0 (0 records no rejects), not {value!r}."
        )
