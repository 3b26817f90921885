"""The ``--state-file``: the sandbox's state as JSON, so it survives restarts.

The file holds access tokens, so it is written with mode 0600; a file that cannot be read or is not a
state file raises :class:`StateFileError` with a one-line reason.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from airflow_provider_fbca.sandbox.members import MemberStore
from airflow_provider_fbca.sandbox.state import (
    AdAccount,
    Audience,
    ReplaceRun,
    SandboxState,
    Token,
    UploadSession,
)

FORMAT_VERSION = 1


class StateFileError(ValueError):
    """A state file that cannot be read, or is not a sandbox state file."""


def save(state: SandboxState, path: Path) -> None:
    """
    Write the state to ``path`` atomically (a temporary file renamed over it).

    :param state: the state.
    :param path: the file.
    """
    document = {
        "format": FORMAT_VERSION,
        "next_audience_seq": state.next_audience_seq,
        "next_session_seq": state.next_session_seq,
        "tokens": [asdict(token) for token in state.tokens.values()],
        "accounts": [asdict(account) for account in state.accounts.values()],
        "audiences": [_dump_audience(audience) for audience in state.audiences.values()],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    # Created 0600 from the start (tokens inside): never readable by others, not even for a moment.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(document))
    os.replace(temporary, path)


def load(state: SandboxState, path: Path) -> None:
    """
    Replace the state's contents with what ``path`` holds.

    :param state: the state to fill.
    :param path: a file written by :func:`save`.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise StateFileError(f"cannot read the state file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise StateFileError(f"the state file {path} is not valid JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT_VERSION:
        raise StateFileError(f"{path} is not a sandbox state file of format {FORMAT_VERSION}")
    try:
        _load_document(state, document)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateFileError(f"the state file {path} is damaged ({type(exc).__name__}: {exc})") from None


def _load_document(state: SandboxState, document: dict[str, Any]) -> None:
    state.next_audience_seq = document["next_audience_seq"]
    state.next_session_seq = document["next_session_seq"]
    state.tokens.update(
        {t["token"]: Token(**{**t, "scopes": tuple(t["scopes"])}) for t in document["tokens"]}
    )
    state.accounts.update({a["digits"]: AdAccount(**a) for a in document["accounts"]})
    state.audiences.clear()
    for raw in document["audiences"]:
        audience = _load_audience(raw)
        state.audiences[audience.id] = audience


_SIMPLE_FIELDS = (
    "id",
    "account_digits",
    "name",
    "created_seq",
    "time_created",
    "customer_file_source",
    "description",
    "subtype",
    "retention_days",
    "is_value_based",
    "opt_out_link",
    "time_updated",
    "time_content_updated",
    "flagged",
    "replace_failed",
    "replace_outcomes",
)


def _dump_audience(audience: Audience) -> dict[str, Any]:
    raw: dict[str, Any] = {name: getattr(audience, name) for name in _SIMPLE_FIELDS}
    raw["members"] = _dump_members(audience.members)
    raw["sessions"] = [asdict(session) for session in audience.sessions.values()]
    raw["schemas_seen"] = [list(schema) for schema in audience.schemas_seen]
    run = audience.replace
    raw["replace"] = (
        None
        if run is None
        else {
            "session_id": run.session_id,
            "started_at": run.started_at,
            "schema": list(run.schema),
            "staged": _dump_members(run.staged),
        }
    )
    return raw


def _load_audience(raw: dict[str, Any]) -> Audience:
    audience = Audience(**{name: raw[name] for name in _SIMPLE_FIELDS})
    audience.members = _load_members(raw["members"])
    audience.sessions = {s["session_id"]: UploadSession(**s) for s in raw["sessions"]}
    audience.schemas_seen = {tuple(schema) for schema in raw["schemas_seen"]}
    if raw["replace"] is not None:
        run = raw["replace"]
        audience.replace = ReplaceRun(
            session_id=run["session_id"],
            started_at=run["started_at"],
            schema=tuple(run["schema"]),
            staged=_load_members(run["staged"]),
        )
    return audience


def _dump_members(store: MemberStore) -> list[dict[str, Any]]:
    return [
        {"schema": list(schema), "rows": rows, "people": people} for schema, rows, people in store.groups()
    ]


def _load_members(groups: list[dict[str, Any]]) -> MemberStore:
    store = MemberStore()
    for group in groups:
        store.add_rows(tuple(group["schema"]), group["rows"], group.get("people"))
    return store
