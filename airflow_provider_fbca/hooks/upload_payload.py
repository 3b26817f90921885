"""The bodies of users / usersreplace calls, in plain Python (no ``requests``, no Airflow): built and checked here."""

from __future__ import annotations

import re
from binascii import a2b_hex
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from airflow_provider_fbca.identifiers import MATCH_KEYS, RowPreparer

#: Meta's limit on the rows of one users / usersreplace request.
MAX_ROWS_PER_REQUEST = 10_000
#: Meta's legacy single-key schema names of hashed keys, and the match key whose rules their values follow.
LEGACY_HASHED_SCHEMAS = {"EMAIL_SHA256": "EMAIL", "PHONE_SHA256": "PHONE"}
#: Schema keys whose values Meta takes only as SHA-256 digests: the match-key table's hashed keys and the
#: legacy names. A value of one of them that is not a digest is raw PII on its way to Meta.
HASHED_SCHEMA_KEYS = frozenset(key.name for key in MATCH_KEYS if key.hashed) | frozenset(
    LEGACY_HASHED_SCHEMAS
)
_DIGEST = re.compile(r"[0-9a-f]{64}")
# What an invalid sample Meta echoes back looks like, never what it is: a column mapped as pre-hashed
# that holds raw e-mails would otherwise bring those e-mails back into return values, XCom and logs.
# The first pattern that matches the whole sample names its shape.
_SAMPLE_SHAPES = (
    (re.compile(r""), "empty"),
    (re.compile(r"[0-9a-f]{64}"), "a SHA-256 hex digest"),
    (re.compile(r"[0-9a-fA-F]{64}"), "a SHA-256 hex digest in upper case"),
    (re.compile(r"[0-9\s()+./-]+"), "digits, not a hash"),
    (re.compile(r"[0-9a-fA-F]+"), "hexadecimal but not 64 characters"),
    (re.compile(r"[^@\s]+@[^@\s]+"), "an e-mail address, not hashed"),
)
_OTHER_SHAPE = "text, not a hash"
# Columns Meta takes as another JSON type than text (DATA_PROCESSING_OPTIONS as a list, its country and
# state as integers): the match-key table says which and how.
_PAYLOAD_VALUES = {key.name: key.payload_value for key in MATCH_KEYS if key.payload_value is not None}


def normalize_session(session: Mapping[str, Any]) -> dict[str, Any]:
    """
    Check an upload session and type it as Meta wants it.

    :param session: ``session_id`` (positive int64, unique in the ad account), ``batch_seq`` (from 1),
        ``last_batch_flag`` (true on the last batch) and optionally ``estimated_num_total``.
    """
    missing = {"session_id", "batch_seq", "last_batch_flag"} - set(session)
    if missing:
        raise ValueError(f"The upload session lacks {', '.join(sorted(missing))}.")
    normalized = {
        "session_id": int(session["session_id"]),
        "batch_seq": int(session["batch_seq"]),
        "last_batch_flag": bool(session["last_batch_flag"]),
    }
    if not 0 < normalized["session_id"] < 2**63:
        raise ValueError("session_id must be a positive 64-bit integer.")
    if normalized["batch_seq"] < 1:
        raise ValueError("batch_seq starts at 1.")
    if session.get("estimated_num_total") is not None:
        normalized["estimated_num_total"] = int(session["estimated_num_total"])
    return normalized


def describe_invalid_entry_samples(samples: Any, schema: str | Sequence[str]) -> Any:
    """
    Meta's ``invalid_entry_samples`` in the same shape, with each sample replaced by what it looks like.

    Meta echoes back some of the values it found invalid. Those are whatever the client sent, raw PII
    when a column mapped as pre-hashed holds e-mails, so no sample is kept: each becomes a fixed
    description of its shape (``"a SHA-256 hex digest in upper case"``, ``"an e-mail address, not
    hashed"``, ...), prefixed with the schema key Meta's reason names (or the schema's only key).
    Meta's reason text itself is not kept either.

    :param samples: the answer's ``invalid_entry_samples``: a map of sample to reason (the reference),
        or a list of samples (the guide).
    :param schema: the upload's schema.
    :return: ``{"sample 1": "EMAIL: an e-mail address, not hashed", ...}`` for a map, a list
        of such descriptions for a list, ``{}`` for anything else.
    """
    keys = [schema] if isinstance(schema, str) else list(schema)
    if isinstance(samples, Mapping):
        return {
            f"sample {number}": _describe_sample(sample, reason, keys)
            for number, (sample, reason) in enumerate(samples.items(), start=1)
        }
    if isinstance(samples, list):
        return [_describe_sample(sample, "", keys) for sample in samples]
    return {}


def _describe_sample(sample: Any, reason: Any, keys: Sequence[str]) -> str:
    text = "" if sample is None else str(sample)
    shape = next((label for pattern, label in _SAMPLE_SHAPES if pattern.fullmatch(text)), _OTHER_SHAPE)
    named = [key for key in keys if re.search(rf"\b{re.escape(key)}\b", str(reason or ""))]
    if not named and len(keys) == 1:
        named = list(keys)
    return f"{'/'.join(named)}: {shape}" if named else shape


def build_upload_payload(
    schema: str | Sequence[str],
    data: Sequence[Any],
    app_ids: Sequence[str] | None = None,
    page_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """
    The ``payload`` of a users / usersreplace call, checked before anything is sent.

    :param schema: one Meta key name (``"EXTERN_ID"``) or a list of them (multi-key).
    :param data: the rows: lists of values for a list schema, values (or one-value lists) otherwise.
    :param app_ids: the app ids ``APPUID`` values belong to.
    :param page_ids: the page ids ``PAGEUID`` values belong to.
    :raises ValueError: for a malformed upload, or a hashed key holding a value that is not a SHA-256 digest
        (see :func:`check_hashed_values`); nothing was sent.
    """
    rows = data if isinstance(data, list) else list(data)
    if not rows:
        raise ValueError("No rows to upload.")
    if len(rows) > MAX_ROWS_PER_REQUEST:
        raise ValueError(
            f"{len(rows)} rows in one request; Meta accepts at most {MAX_ROWS_PER_REQUEST}. Split the upload "
            "into batches of one session (batch_seq 1, 2, ...)."
        )
    payload: dict[str, Any] = {"schema": schema, "data": rows}
    if not isinstance(schema, str):
        schema = list(schema)
        if not schema or not all(isinstance(key, str) and key for key in schema):
            raise ValueError("The schema must be a key name or a non-empty list of key names.")
        width = len(schema)
        widths = set(map(len, rows))  # in C; the row at fault is looked for only when there is one
        bad = None if widths == {width} else next(i for i, row in enumerate(rows) if len(row) != width)
        if bad is not None:
            raise ValueError(f"Row {bad} has {len(rows[bad])} values; the schema has {width} keys.")
        # Each column is one individual key; Meta's SDK refuses list schemas without is_raw.
        payload.update(schema=schema, is_raw=True, data=_typed_columns(schema, rows))
    check_hashed_values(schema, rows)
    if app_ids:
        payload["app_ids"] = [str(app_id) for app_id in app_ids]
    if page_ids:
        payload["page_ids"] = [str(page_id) for page_id in page_ids]
    return payload


def _typed_columns(schema: list[str], rows: list[Any]) -> list[Any]:
    """``rows`` with the text of the columns Meta wants typed (lists, integers) converted; others as given."""
    typed = [(index, _PAYLOAD_VALUES[key]) for index, key in enumerate(schema) if key in _PAYLOAD_VALUES]
    if not typed:
        return rows
    converted = []
    for row in rows:
        row = list(row)
        for index, to_payload in typed:
            if isinstance(row[index], str):
                row[index] = to_payload(row[index])
        converted.append(row)
    return converted


def _column(rows: Sequence[Any], position: int | None) -> list[Any]:
    """One column of the rows; ``position`` None for a single-key schema (values, or one-value lists)."""
    if position is None:
        return [row[0] if isinstance(row, (list, tuple)) and len(row) == 1 else row for row in rows]
    return list(map(itemgetter(position), rows))


def _all_digests_or_empty(values: list[Any]) -> bool:
    """Whether every value is a lowercase SHA-256 hex digest or "", in a few C-level passes over the column."""
    try:
        # The join takes text only (TypeError otherwise), so no pass over the values' types: a subclass
        # of str joins, and is a digest or not as its text is.
        if not set(map(len, values)) <= {0, 64}:
            return False
        digits = "".join(values)
        a2b_hex(digits)  # hex digits only (no whitespace, unlike bytes.fromhex), a quarter faster
    except (TypeError, ValueError):  # binascii.Error is one; so is text that is not ASCII
        return False
    return not any(letter in digits for letter in "ABCDEF")  # Meta's digests are lowercase


def _count_not_digests(values: list[Any]) -> int:
    """How many values are neither a SHA-256 hex digest (lowercase) nor empty ("" or None)."""
    if _all_digests_or_empty(values):
        return 0
    return sum(
        1
        for value in values
        if not (value is None or value == "" or (isinstance(value, str) and _DIGEST.fullmatch(value)))
    )


def check_hashed_values(schema: str | Sequence[str], rows: Sequence[Any]) -> None:
    """
    Refuse an upload in which a hashed key holds anything but SHA-256 hex digests (64 lowercase hex) or "".

    Such a value is raw PII (an e-mail, a phone number) or a wrongly encoded hash; Meta would store the
    one and count the other as invalid. The message names each key and how many of its values are wrong,
    never a value.

    :param schema: one key name, or a list of them (rows as long as the list).
    :param rows: the rows, already checked against the schema's width.
    :raises ValueError: naming the keys, the counts and the fix.
    """
    if isinstance(schema, str):
        columns = [(schema, None)] if schema in HASHED_SCHEMA_KEYS else []
    else:
        columns = [(key, position) for position, key in enumerate(schema) if key in HASHED_SCHEMA_KEYS]
    wrong = {key: _count_not_digests(_column(rows, position)) for key, position in columns}
    counts = [f"{count} of {len(rows)} {key} values" for key, count in wrong.items() if count]
    if counts:
        raise ValueError(
            f"Refusing to send {', '.join(counts)}: a hashed key takes only SHA-256 hex digests "
            "(64 lowercase hexadecimal characters) or empty values, and anything else may be raw personal "
            "data. Pass prepare=True to normalize and hash the values by Meta's rules, or prepare them "
            "with airflow_provider_fbca.identifiers (prepare, RowPreparer) first."
        )


@dataclass
class PreparedUpload:
    """
    What :func:`prepare_upload` made of raw rows.

    :param schema: the schema to send: Meta's key names (an alias such as ``email`` becomes ``EMAIL``).
    :param rows: what to send for each row kept (a value for a single-key schema), in the input order.
    :param rejected: how many input rows were left out, none of their keys being usable.
    :param dropped: reason -> count of values that were not usable identifiers (sent empty).
    """

    schema: str | list[str]
    rows: list[Any]
    rejected: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


def prepare_upload(schema: str | Sequence[str], data: Sequence[Any]) -> PreparedUpload:
    """
    Normalize and hash raw rows by Meta's rules, through the identifiers module's :class:`RowPreparer`.

    The operator's rules apply: a row's COUNTRY drives its PHONE, ZIP and ST; an unusable value is sent
    empty and counted by reason; a row left with no identifier is not sent. A value that already is a
    SHA-256 digest passes through, lowercased.

    :param schema: one key name (Meta's, a legacy ``EMAIL_SHA256`` / ``PHONE_SHA256``, or an alias) or a
        list of them.
    :param data: the raw rows, as for :func:`build_upload_payload`.
    :raises ValueError: for a key the identifiers module does not know, or a key given twice.
    """
    single = isinstance(schema, str)
    keys = [schema] if single else list(schema)
    preparer = RowPreparer([LEGACY_HASHED_SCHEMAS.get(key, key) for key in keys])
    rows = data if isinstance(data, list) else list(data)
    batch = preparer.prepare_rows([(value,) for value in _column(rows, None)] if single else rows)
    if single and len(preparer.schema) == 1:
        # A legacy name keeps its name on the wire: Meta applies the same rules to it.
        return PreparedUpload(
            schema=schema if schema in LEGACY_HASHED_SCHEMAS else preparer.schema[0],
            rows=[row[0] for row in batch.rows],
            rejected=len(batch.rejected),
            dropped=batch.dropped,
        )
    return PreparedUpload(
        schema=list(preparer.schema),  # date_of_birth (dob) fills DOBY, DOBM and DOBD
        rows=[list(row) for row in batch.rows],
        rejected=len(batch.rejected),
        dropped=batch.dropped,
    )


def session_label(session: Mapping[str, Any] | None) -> str:
    """
    How a log line names an upload's session: `` (session 1, batch 2, last)``, or nothing without one.

    :param session: the normalized session, or None.
    """
    if not session:
        return ""
    last = ", last" if session.get("last_batch_flag") else ""
    return f" (session {session['session_id']}, batch {session['batch_seq']}{last})"
