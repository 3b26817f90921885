"""Which upload sessions the sensor confirms, and of what kind: read from what a user or a template gives.

The forms accepted: a list of ids, a single id, the text Jinja renders from a list, a comma-separated
string, and the forms that say each session's kind (the sync report's ``upload_sessions`` and
``sessions``). Plain Python, no Airflow import.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable, Mapping
from typing import Any

# The kinds of upload session a sync reports: the rows of "add" and "replace" sessions join the audience
# (the sensor's thresholds judge these), those of "remove" sessions leave it (reported apart).
ADDITION_KINDS = ("add", "replace")
REMOVAL_KINDS = ("remove",)
SESSION_KINDS = ADDITION_KINDS + REMOVAL_KINDS
# The keys by which a sync report (a mapping) lists its sessions.
_REPORT_KEYS = frozenset({"upload_sessions", "session_ids"})


def parse_session_ids(value: Any) -> list[str]:
    """
    Normalize what a user or a template hands the sensor into a list of session ids.

    Accepts a list (or tuple or set) of ids, a single id as an int or a string, and the string
    rendering of a list that Jinja produces from an XCom list (``"[123, 456]"`` or ``"['123']"``),
    as well as a comma-separated string; and the forms that say each session's kind
    (:func:`parse_sessions`). Duplicates are dropped, order is kept.

    :param value: the ids, in any of the forms above.
    :return: the ids as strings of digits.
    :raises ValueError: when something is not a positive integer id.
    """
    return list(parse_sessions(value))


def parse_sessions(value: Any) -> dict[str, str | None]:
    """
    The session ids, each with its kind (``add``, ``remove``, ``replace``) when ``value`` says it.

    Besides the plain forms of :func:`parse_session_ids` (kind ``None``), accepts the sync report's
    ``upload_sessions`` (``{"add": [...], "remove": [...]}``, or the text Jinja renders from it) and its
    ``sessions`` (items with ``session_id`` and ``kind``); a whole sync report stands for its sessions,
    and a list of reports (the output of a mapped sync task: one per partition) or of id lists is
    flattened, so the sensor confirms every partition's sessions.

    :param value: the ids, in any of these forms.
    :raises ValueError: when something is not a positive integer id, or a kind is unknown.
    """
    if isinstance(value, str):
        value = _parse_id_text(value)
    if isinstance(value, Mapping) and _REPORT_KEYS.intersection(value):  # a whole sync report
        value = value["upload_sessions" if "upload_sessions" in value else "session_ids"]
    if isinstance(value, Mapping):
        return {sid: _kind(kind) for kind, ids in value.items() for sid in parse_session_ids(ids)}
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, Iterable):
        raise ValueError(
            f"session_ids must be a list of session ids or a single id, got {type(value).__name__}"
        )
    sessions: dict[str, str | None] = {}
    for item in value:
        if isinstance(item, (list, tuple)) or (isinstance(item, Mapping) and _REPORT_KEYS.intersection(item)):
            for sid, kind in parse_sessions(item).items():  # one partition's report, or a list of ids
                sessions[sid] = kind or sessions.get(sid)
        elif isinstance(item, Mapping):
            sessions[_session_id(item.get("session_id"))] = _kind(item.get("kind"))
        else:
            sessions.setdefault(_session_id(item), None)
    return sessions


def _kind(kind: Any) -> str:
    if kind not in SESSION_KINDS:
        raise ValueError(
            f"{kind!r} is not a kind of upload session; the kinds are {', '.join(SESSION_KINDS)}"
        )
    return str(kind)


def _parse_id_text(text: str) -> Any:
    text = text.strip()
    if text.startswith(("[", "(", "{")):
        try:
            return json.loads(text)
        except ValueError:
            pass
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError) as exc:
            raise ValueError(f"session_ids {text[:80]!r} is not a list of session ids") from exc
    if "," in text:
        return [part for part in (piece.strip() for piece in text.split(",")) if part]
    return text


def _session_id(item: Any) -> str:
    if isinstance(item, bool):
        raise ValueError(f"{item!r} is not a session id")
    text = str(item).strip()
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"{item!r} is not a session id (a positive integer)")
    return str(int(text))
