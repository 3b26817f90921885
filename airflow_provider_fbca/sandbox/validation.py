"""The ``payload`` and ``session`` parameters of ``/users`` and ``/usersreplace``, checked as Meta checks them.

Meta refuses a request whose payload is malformed (unknown schema keys, rows of the wrong length, more
than 10,000 rows, APPUID without ``app_ids``, LDU fields outside their documented values...) with error
100, but only *counts* values of hashed keys that are not SHA-256 digests (``num_invalid_entries`` and
``invalid_entry_samples``). Such entries "are not added to the custom audience": an invalid value is
dropped from its row, and a row left without a valid strong identifier is not stored at all.

The hot path checks a whole batch with a few C-level passes (``bytes.fromhex`` over every hashed value
at once, for instance) and only looks at rows one by one when something is off.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from airflow_provider_fbca.sandbox.errors import invalid_parameter, missing_parameter

MAX_ROWS_PER_REQUEST = 10_000
MAX_INVALID_SAMPLES = 100
SEPARATOR = "\x1f"

HASHED_KEYS = frozenset(
    {"EMAIL", "PHONE", "GEN", "DOBY", "DOBM", "DOBD", "LN", "FN", "FI", "CT", "ST", "ZIP", "COUNTRY"}
)
PLAIN_KEYS = frozenset(
    {
        "EXTERN_ID",
        "MADID",
        "APPUID",
        "PAGEUID",
        "LOOKALIKE_VALUE",
        "DATA_PROCESSING_OPTIONS",
        "DATA_PROCESSING_OPTIONS_COUNTRY",
        "DATA_PROCESSING_OPTIONS_STATE",
    }
)
MULTI_KEYS = HASHED_KEYS | PLAIN_KEYS
# Legacy single-key schema names and the multi-key name their values are stored under.
LEGACY_KEYS = {
    "EMAIL_SHA256": "EMAIL",
    "PHONE_SHA256": "PHONE",
    "MOBILE_ADVERTISER_ID": "MADID",
    "UID": "APPUID",
}
# Keys that identify a person on their own: a removal row deletes members sharing one of these.
STRONG_KEYS = ("EXTERN_ID", "EMAIL", "PHONE", "MADID", "APPUID", "PAGEUID")

# Limited Data Use (LDU): each field's accepted values, as text (per-row cells and payload fields).
LDU_OPTIONS = ("DATA_PROCESSING_OPTIONS", ('["LDU"]', "[]"))
LDU_COUNTRY = ("DATA_PROCESSING_OPTIONS_COUNTRY", ("0", "1"))
LDU_STATE = ("DATA_PROCESSING_OPTIONS_STATE", ("0", "1000"))
LDU_FIELDS = dict((LDU_OPTIONS, LDU_COUNTRY, LDU_STATE))

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


@dataclass
class SessionParam:
    """The ``session`` parameter of an upload."""

    session_id: str | None = None
    batch_seq: int | None = None
    last_batch_flag: bool = False
    estimated_num_total: int | None = None


@dataclass
class Upload:
    """
    A validated payload: the canonical schema and the rows as lists of text.

    ``packable`` tells, row by row, whether every hashed value is a SHA-256 digest or "" (so the row
    can be stored in binary); None means every row is.
    """

    schema: tuple[str, ...]
    rows: list[list[str]] = field(default_factory=list)
    packable: list[bool] | None = None
    num_received: int = 0
    app_ids: list[str] = field(default_factory=list)
    page_ids: list[str] = field(default_factory=list)
    num_invalid_entries: int = 0
    invalid_entry_samples: dict[str, str] = field(default_factory=dict)


def decode_json_param(name: str, value: Any) -> Any:
    """
    Return a parameter that may arrive as a JSON string (form bodies) or as an object (JSON bodies).

    :param name: the parameter's name, for the error message.
    :param value: the raw value.
    """
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        raise invalid_parameter(f"param {name} must be a JSON object") from None


def parse_session(raw: Any) -> SessionParam | None:
    """
    Parse the ``session`` parameter (``None`` when absent).

    :param raw: the parameter as received.
    """
    if raw is None or raw == "":
        return None
    value = decode_json_param("session", raw)
    if not isinstance(value, dict):
        raise invalid_parameter("param session must be a JSON object")
    session_id = value.get("session_id")
    if session_id is not None and not _is_positive_int(session_id):
        raise invalid_parameter("param session[session_id] must be a positive 64-bit integer")
    batch_seq = value.get("batch_seq")
    if batch_seq is not None and not _is_positive_int(batch_seq):
        raise invalid_parameter("param session[batch_seq] must be a positive integer")
    estimated = value.get("estimated_num_total")
    return SessionParam(
        session_id=str(int(session_id)) if session_id is not None else None,
        batch_seq=int(batch_seq) if batch_seq is not None else None,
        last_batch_flag=_is_true(value.get("last_batch_flag", False)),
        estimated_num_total=int(estimated) if _is_positive_int(estimated) else None,
    )


def parse_payload(raw: Any, *, app_ids: Any = None, page_ids: Any = None) -> Upload:
    """
    Validate the ``payload`` parameter of an upload.

    :param raw: the parameter as received (a JSON string or an object).
    :param app_ids: the top-level ``app_ids`` parameter, if any (the payload may carry it too).
    :param page_ids: the top-level ``page_ids`` parameter, if any.
    """
    if raw is None or raw == "":
        raise missing_parameter("payload")
    payload = decode_json_param("payload", raw)
    if not isinstance(payload, dict):
        raise invalid_parameter("param payload must be a JSON object")
    schema, single = _parse_schema(payload.get("schema"))
    data = payload.get("data")
    if data is None:
        raise missing_parameter("payload[data]")
    if not isinstance(data, list):
        raise invalid_parameter("param payload[data] must be an array")
    if len(data) > MAX_ROWS_PER_REQUEST:
        raise invalid_parameter(
            f"Too many rows in payload[data]: {len(data)}; at most {MAX_ROWS_PER_REQUEST} are allowed in "
            "one request",
            user_title="Too Many Users In One Request",
            user_msg=f"Send at most {MAX_ROWS_PER_REQUEST} users per request.",
        )
    upload = Upload(
        schema=schema,
        app_ids=_id_list("app_ids", payload.get("app_ids", app_ids)),
        page_ids=_id_list("page_ids", payload.get("page_ids", page_ids)),
    )
    if "APPUID" in schema and not upload.app_ids:
        raise invalid_parameter("app_ids is required when the schema contains APPUID (or UID)")
    if "PAGEUID" in schema and not upload.page_ids:
        raise invalid_parameter("page_ids is required when the schema contains PAGEUID")
    _check_payload_ldu(payload)
    _validate_rows(upload, [[row] if not isinstance(row, list) else row for row in data] if single else data)
    return upload


def _parse_schema(raw: Any) -> tuple[tuple[str, ...], bool]:
    """Return the canonical schema and whether it was given as a single string."""
    if raw is None or raw == "" or raw == []:
        raise missing_parameter("payload[schema]")
    single = isinstance(raw, str)
    keys = [raw] if single else raw
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise invalid_parameter("param payload[schema] must be a string or an array of strings")
    canonical = []
    for position, key in enumerate(keys):
        name = LEGACY_KEYS.get(key, key) if single else key
        if name not in MULTI_KEYS:
            allowed = ", ".join(sorted(MULTI_KEYS | (set(LEGACY_KEYS) if single else set())))
            raise invalid_parameter(
                f"param payload[schema][{position}] must be one of the following values: {allowed}",
                user_title="Invalid Schema Key",
                user_msg=f"{key} is not a supported customer data key.",
            )
        canonical.append(name)
    if len(set(canonical)) != len(canonical):
        raise invalid_parameter("param payload[schema] must not repeat a key")
    return tuple(canonical), single


def _validate_rows(upload: Upload, rows: list[Any]) -> None:
    """Check the rows' shape and LDU cells, count invalid entries, and keep the valid rows as text."""
    _check_shapes(rows, len(upload.schema))
    _check_row_ldu(upload.schema, rows)
    upload.num_received = len(rows)
    if _batch_is_clean(upload.schema, rows):
        upload.rows = rows
        return
    pattern = row_pattern(upload.schema)
    checked = [_clean_row(upload, row, pattern) for row in rows]
    kept = [(values, packable) for values, packable in checked if values is not None]
    upload.rows = [values for values, _ in kept]
    upload.packable = [packable for _, packable in kept]


def _check_payload_ldu(payload: dict[str, Any]) -> None:
    """Refuse payload-level LDU fields (``data_processing_options``...) outside their documented values."""
    for key, allowed in LDU_FIELDS.items():
        name = key.lower()
        if name in payload and _ldu_text(payload[name]) not in allowed:
            raise _ldu_error(f"payload[{name}]", allowed)


def _check_row_ldu(schema: tuple[str, ...], rows: list[list[Any]]) -> None:
    """Refuse rows whose LDU cells hold anything but the documented values."""
    for position, key in enumerate(schema):
        allowed = LDU_FIELDS.get(key)
        if allowed is None:
            continue
        for number, row in enumerate(rows):
            if _ldu_text(row[position]) not in allowed:
                raise _ldu_error(f"payload[data][{number}][{position}] ({key})", allowed)


def _ldu_text(value: Any) -> str:
    """An LDU value as text: lists as compact JSON, JSON strings of lists re-encoded the same way."""
    if isinstance(value, str) and value.startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return _as_text(value)


def _ldu_error(where: str, allowed: tuple[str, ...]) -> Any:
    return invalid_parameter(
        f"Invalid Limited Data Use value at {where}: must be one of {', '.join(allowed)}",
        user_title="Invalid Data Processing Options",
        user_msg='Send DATA_PROCESSING_OPTIONS as ["LDU"] or [], its country as 0 or 1 and its state as 0 '
        "or 1000.",
    )


def _check_shapes(rows: list[Any], width: int) -> None:
    """Refuse the first row that is not a list of one value per schema key."""
    if not rows or (set(map(type, rows)) == {list} and set(map(len, rows)) == {width}):
        return
    for number, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != width:
            size = len(row) if isinstance(row, list) else 1
            raise invalid_parameter(
                f"Invalid data at payload[data][{number}]: the row has {size} values but the schema has "
                f"{width} keys",
                user_title="Data Doesn't Match Schema",
                user_msg="Every row of payload[data] must have one value per key of payload[schema].",
            )


def _batch_is_clean(schema: tuple[str, ...], rows: list[list[Any]]) -> bool:
    """
    Tell, with a few C-level passes over each column, whether every value is well formed.

    False when any value needs a closer look (a bad hash, a typed value, a separator inside a value, a
    bad LOOKALIKE_VALUE): the caller then goes row by row.
    """
    for position, key in enumerate(schema):
        column = list(map(itemgetter(position), rows))
        try:
            text = "".join(column)  # also sorts out typed values (numbers, null...): they need a closer look
        except TypeError:
            return False
        if not (
            _hashes_are_clean(column, text) if key in HASHED_KEYS else _plain_is_clean(key, column, text)
        ):
            return False
    return True


def _hashes_are_clean(column: list[str], text: str) -> bool:
    """Tell whether every value of a hashed column is a SHA-256 digest (lowercase hex) or "".

    :param column: the values.
    :param text: the values joined.
    """
    return set(map(len, column)) <= {0, 64} and _is_lowercase_hex(text)


def _plain_is_clean(key: str, column: list[str], text: str) -> bool:
    """Tell whether no value of an unhashed column holds the separator, and LOOKALIKE_VALUE is a number.

    :param key: the column's key.
    :param column: the values.
    :param text: the values joined.
    """
    if SEPARATOR in text:  # one character: in the joined text only if in a value
        return False
    return key != "LOOKALIKE_VALUE" or all(map(_NUMBER.fullmatch, column))


def _is_lowercase_hex(text: str) -> bool:
    """Tell whether ``text`` holds only the characters 0-9 and a-f."""
    try:
        if len(bytes.fromhex(text)) * 2 != len(text):  # fromhex skips whitespace
            return False
    except ValueError:
        return False
    return not any(c in text for c in "ABCDEF")


def column_getter(positions: tuple[int, ...] | list[int]) -> Callable[[list[Any]], Any]:
    """
    Return a C-level function giving a row's values at ``positions`` (a sequence, for any count).

    :param positions: the columns.
    """
    if len(positions) == 1:
        return itemgetter(slice(positions[0], positions[0] + 1))
    if not positions:
        return itemgetter(slice(0, 0))
    return itemgetter(*positions)


def _clean_row(upload: Upload, row: list[Any], pattern: re.Pattern[str]) -> tuple[list[str] | None, bool]:
    """
    Check one row of a batch that needed a closer look: its values as text (None when the row is not
    stored), and whether it packs to binary.
    """
    try:
        if pattern.fullmatch(SEPARATOR.join(row)):
            return row, True
    except TypeError:
        pass
    values = []
    invalid = bad_value = False
    for key, value in zip(upload.schema, row, strict=True):
        text = _as_text(value)
        if key in HASHED_KEYS and text and not _SHA256_HEX.fullmatch(text):
            invalid = True
            _sample(upload, text, f"{key} is not a SHA-256 hash (64 lowercase hexadecimal characters)")
            text = ""  # not added to the audience
        elif key == "LOOKALIKE_VALUE" and not _NUMBER.fullmatch(text):
            invalid = bad_value = True
            _sample(upload, text, "LOOKALIKE_VALUE must be a non-negative number")
        values.append(text)
    if not invalid:
        return values, is_packable(upload.schema, values)
    upload.num_invalid_entries += 1
    strong_left = any(value for key, value in zip(upload.schema, values, strict=True) if key in STRONG_KEYS)
    if bad_value or not strong_left:
        return None, False
    return values, is_packable(upload.schema, values)


def is_packable(schema: tuple[str, ...], row: list[str]) -> bool:
    """
    Tell whether a row packs to binary: every hashed value a SHA-256 digest or "", no separator elsewhere.

    :param schema: the canonical schema.
    :param row: the row's values.
    """
    return all(
        (not value or _SHA256_HEX.fullmatch(value)) if key in HASHED_KEYS else SEPARATOR not in value
        for key, value in zip(schema, row, strict=True)
    )


def _as_text(value: Any) -> str:
    """Return a cell as text (numbers and lists arrive typed in JSON bodies)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    return json.dumps(value, separators=(",", ":"))


def _sample(upload: Upload, value: str, reason: str) -> None:
    if len(upload.invalid_entry_samples) < MAX_INVALID_SAMPLES:
        upload.invalid_entry_samples[value[:100]] = reason


_ROW_PATTERNS: dict[tuple[str, ...], re.Pattern[str]] = {}


def row_pattern(schema: tuple[str, ...]) -> re.Pattern[str]:
    """
    Return the regex a joined row of ``schema`` fully matches when every value is well formed.

    :param schema: the canonical schema.
    """
    pattern = _ROW_PATTERNS.get(schema)
    if pattern is None:
        parts = []
        for key in schema:
            if key in HASHED_KEYS:
                parts.append("(?:[0-9a-f]{64})?")
            elif key == "LOOKALIKE_VALUE":
                parts.append(r"\d+(?:\.\d+)?")
            else:
                parts.append("[^\x1f]*")
        pattern = _ROW_PATTERNS[schema] = re.compile("\x1f".join(parts))
    return pattern


def _id_list(name: str, raw: Any) -> list[str]:
    if raw is None or raw == "":
        return []
    value = decode_json_param(name, raw) if isinstance(raw, str) and raw.startswith("[") else raw
    if isinstance(value, (str, int)):
        value = [value]
    if not isinstance(value, list):
        raise invalid_parameter(f"param {name} must be an array of ids")
    return [str(item) for item in value]


def _is_positive_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value > 0
    return isinstance(value, str) and value.isdigit() and int(value) > 0


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1"))
