"""Cursor pagination as Graph pages its edges: ``limit``, ``after`` / ``before`` cursors, ``next`` links.

Every edge the sandbox lists (audiences of an ad account, upload sessions of an audience) is paged the
same way: newest first, 25 items a page unless ``limit`` says otherwise, ``paging.cursors`` on every
non-empty page, ``paging.next`` only when more items follow and ``paging.previous`` only when some came
before. Cursors are opaque to clients; here they carry the item's position (its creation sequence), so
a page stays correct when items are created or deleted between two requests.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

from airflow_provider_fbca.sandbox.errors import invalid_parameter

DEFAULT_PAGE_SIZE = 25
# Parameters a paging link must not repeat: credentials, and the cursor it replaces.
_NOT_IN_LINKS = ("access_token", "appsecret_proof", "after", "before")

Item = TypeVar("Item")


def cursor_page(
    items: Sequence[Item],
    params: Mapping[str, Any],
    link_base: str,
    *,
    position: Callable[[Item], int],
    view: Callable[[Item], dict[str, Any]],
) -> dict[str, Any]:
    """
    Return one page of an edge: ``{"data": [...], "paging": {...}}`` (no ``paging`` when empty).

    :param items: every item of the edge, newest first, i.e. in strictly decreasing ``position``.
    :param params: the request's parameters (``limit``, ``after``, ``before`` and any others, which the
        ``next`` / ``previous`` links repeat).
    :param link_base: the URL of the edge, for the paging links.
    :param position: an item's creation sequence number (what its cursor encodes).
    :param view: how an item of the page is answered.
    """
    limit = positive_int(params.get("limit"), "limit", DEFAULT_PAGE_SIZE)
    start = 0
    if params.get("after"):
        after = _decode_cursor(params["after"])
        start = next((i for i, item in enumerate(items) if position(item) < after), len(items))
    elif params.get("before"):
        before = _decode_cursor(params["before"])
        end = next((i for i, item in enumerate(items) if position(item) <= before), len(items))
        start = max(0, end - limit)
    page = items[start : start + limit]
    body: dict[str, Any] = {"data": [view(item) for item in page]}
    if not page:
        return body
    cursors = {"before": _encode_cursor(position(page[0])), "after": _encode_cursor(position(page[-1]))}
    paging: dict[str, Any] = {"cursors": cursors}
    link_params = {key: value for key, value in params.items() if key not in _NOT_IN_LINKS}
    if start + limit < len(items):
        paging["next"] = f"{link_base}?{urlencode({**link_params, 'after': cursors['after']})}"
    if start > 0:
        paging["previous"] = f"{link_base}?{urlencode({**link_params, 'before': cursors['before']})}"
    body["paging"] = paging
    return body


def positive_int(raw: Any, name: str, default: int) -> int:
    """
    Parse a positive integer parameter; ``default`` when absent.

    :param raw: the parameter as received.
    :param name: its name, for the error message.
    :param default: the value when it is absent.
    """
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise invalid_parameter(f"param {name} must be a positive integer") from None
    if value <= 0:
        raise invalid_parameter(f"param {name} must be a positive integer")
    return value


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: Any) -> int:
    try:
        text = base64.urlsafe_b64decode(str(cursor) + "=" * (-len(str(cursor)) % 4)).decode()
        return int(text.removeprefix("seq:"))
    except ValueError:
        raise invalid_parameter("param after/before is not a valid cursor") from None
