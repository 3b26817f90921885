"""What may key a row of a sync: the EXTERN_ID as sent, checked before it reaches Meta or the state.

EXTERN_ID is the one match key Meta takes unhashed, and the sync stores it in its state table as the row
key. So an EXTERN_ID that is personal data (an e-mail address, an international phone number: a mapping
pointed at the wrong column) would go to Meta and into the state in clear: the run is refused. A key that
cannot be stored or indexed (too long, control characters such as NUL) only rejects its row, counted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from airflow_provider_fbca.identifiers import normalize
from airflow_provider_fbca.sync.plan import SyncPlanError

#: Longer keys are no customer id, and would overflow the state's index (PostgreSQL's B-tree rows).
MAX_ROW_KEY_LENGTH = 1000

MISSING = "extern_id.missing"
TOO_LONG = "extern_id.too_long"
CONTROL_CHARACTER = "extern_id.control_character"
EMAIL = "extern_id.email"
PHONE = "extern_id.phone"
#: The reasons that refuse the whole run, and how its message names them.
PERSONAL = {EMAIL: "an e-mail address", PHONE: "an international phone number"}

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class PersonalRowKeyError(SyncPlanError):
    """An EXTERN_ID holds personal data; nothing was created or sent."""


def row_key_problem(key: str) -> str | None:
    """Why a prepared EXTERN_ID cannot key a row (a reason name), or None when it can.

    Plain digit ids (``1234567890``) are customer ids, not phone numbers: only a leading "+" followed by a
    valid number counts as a phone.

    :param key: the EXTERN_ID as prepared for the wire (trimmed).
    """
    if not key:
        return MISSING
    if len(key) > MAX_ROW_KEY_LENGTH:
        return TOO_LONG
    if _CONTROL.search(key):
        return CONTROL_CHARACTER
    if "@" in key and normalize("EMAIL", key):
        return EMAIL
    if key.startswith("+") and normalize("PHONE", key):
        return PHONE
    return None


def clean_keys(keys: Sequence[str]) -> bool:
    """Whether :func:`row_key_problem` finds nothing in any of the keys, told from their joined text.

    The hot path of a million rows: a batch of plain customer ids (no key empty or too long, none with a
    control character, an "@" or a leading "+") is cleared by a few passes in C, not a call per key.

    :param keys: EXTERN_IDs as prepared for the wire.
    """
    if not all(keys) or max(map(len, keys), default=0) > MAX_ROW_KEY_LENGTH:
        return False
    joined = " ".join(keys)
    # isprintable() clears the usual text three times faster than the search: a control character is
    # never printable (a key it fails, e.g. with a no-break space, gets the exact search).
    return "@" not in joined and "+" not in joined and (joined.isprintable() or not _CONTROL.search(joined))


def refuse_personal_key(reason: str, row: int | None) -> PersonalRowKeyError:
    """The error refusing a run whose EXTERN_ID column holds personal data (described, never quoted).

    :param reason: :data:`EMAIL` or :data:`PHONE`.
    :param row: the position of the first such row in the query's result (1-based); None when the rows
        did not come in the query's order (the diff in the warehouse sends only the changed ones).
    """
    where = "A row" if row is None else f"Row {row}"
    return PersonalRowKeyError(
        f"{where} of the query has an EXTERN_ID that is {PERSONAL[reason]}. EXTERN_ID is sent to Meta "
        "unhashed and kept in the sync's state table, so it must not be personal data: map external_id to a "
        "customer id column, or hash the value in SQL (e.g. sha256 of the lowercased e-mail) if there is "
        "none. Nothing was created or sent."
    )
