"""The ``/_sandbox`` endpoints: look at the sandbox (members, request log) and steer it (fixtures, faults).

Reads are plain ``GET`` requests. Writes (``POST`` / ``DELETE``) need ``Content-Type:
application/json`` and refuse an ``Origin`` other than the sandbox's own, so a web page cannot register
tokens or fault rules with a cross-site "simple" request (a form post or a ``no-cors`` fetch).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from airflow_provider_fbca.sandbox.faults import FaultRuleError, release_ending
from airflow_provider_fbca.sandbox.state import DEFAULT_SCOPES

if TYPE_CHECKING:
    from airflow_provider_fbca.sandbox.server import Sandbox


class ControlError(Exception):
    """A refused ``/_sandbox`` request, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def control_request(
    sandbox: Sandbox,
    method: str,
    path: str,
    body: bytes,
    *,
    content_type: str | None,
    origin: str | None,
    own_origins: set[str],
) -> tuple[int, dict[str, Any]]:
    """
    Answer one ``/_sandbox`` request: the status and the JSON body.

    :param sandbox: the sandbox.
    :param method: the HTTP method.
    :param path: the URL path, without a trailing slash.
    :param body: the raw body.
    :param content_type: the ``Content-Type`` header.
    :param origin: the ``Origin`` header, if any.
    :param own_origins: the origins that are the sandbox itself (``http://127.0.0.1:PORT``...).
    """
    parts = path.split("/")[2:]
    if method == "GET":
        return _inspect(sandbox, parts)
    if origin is not None and origin.lower() not in own_origins:
        raise ControlError(403, "sandbox control requests from a web page of another origin are refused")
    if not (content_type or "").lower().startswith("application/json"):
        raise ControlError(415, "sandbox control writes need Content-Type: application/json")
    data = _json_object(body)
    try:
        return _steer(sandbox, method, parts, data)
    except (FaultRuleError, ValueError, KeyError, TypeError) as exc:
        raise ControlError(400, str(exc)) from None


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        raise ControlError(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ControlError(400, "the body must be a JSON object")
    return data


def _inspect(sandbox: Sandbox, parts: list[str]) -> tuple[int, dict[str, Any]]:
    if len(parts) == 3 and parts[0] == "audiences" and parts[2] == "members":
        try:
            return 200, {"data": sandbox.members(parts[1])}
        except KeyError:
            raise ControlError(404, f"no audience {parts[1]}") from None
    if parts == ["requests"]:
        return 200, {"data": sandbox.requests()}
    if parts == ["faults"]:
        return 200, _faults(sandbox)
    raise ControlError(404, "unknown sandbox endpoint")


def _faults(sandbox: Sandbox) -> dict[str, Any]:
    """The fault rules left, and how many requests a delay rule holds right now."""
    return {"data": sandbox.faults.describe(), "delayed": sandbox.faults.delayed()}


def _steer(
    sandbox: Sandbox, method: str, parts: list[str], data: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """The ``/_sandbox`` endpoints that change fixtures: tokens, terms, flags, limits, delay, clock."""
    if parts == ["faults"]:
        if method == "POST":
            sandbox.set_faults(data.get("faults"))
        elif method == "DELETE":  # the held requests go on, or are dropped if the body says so
            sandbox.faults.clear(release_ending(data.get("disconnect")))
        else:
            raise ControlError(405, "use POST or DELETE on /_sandbox/faults")
        return 200, _faults(sandbox)
    if method != "POST":
        raise ControlError(404, "unknown sandbox endpoint")
    if parts == ["reset"]:
        sandbox.reset()
    elif parts == ["tokens"]:
        sandbox.add_token(
            data["token"],
            expires_at=data.get("expires_at"),
            scopes=data.get("scopes", DEFAULT_SCOPES),
            valid=data.get("valid", True),
        )
    elif len(parts) == 3 and parts[0] == "accounts" and parts[2] == "terms":
        sandbox.set_terms_accepted(parts[1], bool(data.get("accepted", True)))
    elif len(parts) == 3 and parts[0] == "audiences" and parts[2] == "flag":
        sandbox.flag_audience(parts[1], bool(data.get("flagged", True)))
    elif parts == ["rate_limit"]:
        sandbox.set_rate_limit(
            data.get("budget"),
            window_s=data.get("window_s"),
            lockout_s=data.get("lockout_s"),
            error_code=data.get("error_code"),
            access_tier=data.get("access_tier"),
        )
    elif parts == ["processing_delay"]:
        sandbox.set_processing_delay(float(data["seconds"]))
    elif parts == ["removal_floor"]:
        sandbox.set_removal_floor(int(data["size"]))
    elif parts == ["clock"]:
        advance = getattr(sandbox.clock, "advance", None)
        if advance is None:
            raise ValueError("the sandbox runs on the real clock; start it with a ManualClock to move time")
        advance(float(data.get("advance_s", 0)))
    elif parts == ["save"]:
        sandbox.save_state()
    else:
        raise ControlError(404, "unknown sandbox endpoint")
    return 200, {"success": True}
