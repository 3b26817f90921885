"""SQLite's prefilter of the state rows that may hold a removal identifier (:class:`.removals.MayHold`).

The prefilter may let a non-holder through (the exact join settles it) but must never drop a holder,
whatever the schema or the stored form of the row. End to end, on SQLite and PostgreSQL:
``tests/operators/test_sync_removals.py``.
"""

from __future__ import annotations

from airflow_provider_fbca.sync.removals import MayHold
from airflow_provider_fbca.sync.state import encode_identifiers

SHARED = "f" * 64  # a hashed e-mail two people share


def test_a_holder_passes_whatever_the_position_of_the_key_in_its_schema() -> None:
    may_hold = MayHold({"EMAIL"}, expected=1)
    may_hold.add([SHARED])
    assert may_hold.check("EXTERN_ID,EMAIL,PHONE", encode_identifiers(["k1", SHARED, "a" * 64])) == 1
    # A row of an older mapping: another schema, the e-mail elsewhere; then the first schema again.
    assert may_hold.check("EXTERN_ID,PHONE,FN,EMAIL", encode_identifiers(["k2", "", "b" * 64, SHARED])) == 1
    assert may_hold.check("EXTERN_ID,EMAIL,PHONE", encode_identifiers(["k3", SHARED, ""])) == 1


def test_a_holder_stored_as_json_passes() -> None:
    may_hold = MayHold({"MADID"}, expected=1)
    may_hold.add(["device\x1fwith a separator"])
    stored = encode_identifiers(["k1", "device\x1fwith a separator"])
    assert stored.startswith("\x1e")  # the rare JSON form
    assert may_hold.check("EXTERN_ID,MADID", stored) == 1


def test_rows_without_a_withheld_key_of_the_removals_are_dropped() -> None:
    may_hold = MayHold({"EMAIL"}, expected=1)
    may_hold.add([SHARED])
    # The value sits under a key the removals do not carry (or that is never withheld): not a holder.
    assert may_hold.check("EXTERN_ID,PHONE", encode_identifiers(["k1", SHARED])) == 0
    assert may_hold.check("EXTERN_ID,FN", encode_identifiers(["k2", SHARED])) == 0
    assert may_hold.check("EXTERN_ID", encode_identifiers([SHARED])) == 0


def test_the_table_grows_with_the_removals_and_stays_bounded() -> None:
    assert len(MayHold({"EMAIL"}, expected=10).flags) == 1 << 16
    assert len(MayHold({"EMAIL"}, expected=100_000).flags) == 1 << 23
    assert len(MayHold({"EMAIL"}, expected=10**9).flags) == 1 << 23


def test_only_the_withheld_positions_are_read_whatever_the_row_length() -> None:
    may_hold = MayHold({"PHONE"}, expected=1)
    may_hold.add([SHARED])
    # The value last in its row, then followed by more values: a holder either way.
    assert may_hold.check("EXTERN_ID,EMAIL,PHONE", encode_identifiers(["k1", "a" * 64, SHARED])) == 1
    assert may_hold.check("EXTERN_ID,PHONE,FN", encode_identifiers(["k2", SHARED, "b" * 64])) == 1
    # The value after the withheld position, or a row shorter than its schema: no holder.
    assert may_hold.check("EXTERN_ID,PHONE,FN", encode_identifiers(["k3", "c" * 64, SHARED])) == 0
    assert may_hold.check("EXTERN_ID,EMAIL,PHONE", encode_identifiers(["k4", SHARED])) == 0
