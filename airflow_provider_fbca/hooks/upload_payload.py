"""The bodies of users / usersreplace calls, in plain Python (no ``requests``, no Airflow): built and checked here."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

#: Meta's limit on the rows of one users / usersreplace request.
MAX_ROWS_PER_REQUEST = 10_000
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
        bad = next((index for index, row in enumerate(rows) if len(row) != width), None)
        if bad is not None:
            raise ValueError(f"Row {bad} has {len(rows[bad])} values; the schema has {width} keys.")
        # Each column is one individual key; Meta's SDK refuses list schemas without is_raw.
        payload.update(schema=schema, is_raw=True)
    if app_ids:
        payload["app_ids"] = [str(app_id) for app_id in app_ids]
    if page_ids:
        payload["page_ids"] = [str(page_id) for page_id in page_ids]
    return payload


def session_label(session: Mapping[str, Any] | None) -> str:
    """
    How a log line names an upload's session: `` (session 1, batch 2, last)``, or nothing without one.

    :param session: the normalized session, or None.
    """
    if not session:
        return ""
    last = ", last" if session.get("last_batch_flag") else ""
    return f" (session {session['session_id']}, batch {session['batch_seq']}{last})"
