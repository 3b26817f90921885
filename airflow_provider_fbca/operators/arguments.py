"""Operator arguments that may be Jinja templates: read from what the template rendered.

A templated argument can be checked only once it is rendered (in ``execute``); a plain value is checked
when the DAG is parsed, so a typo fails the DAG file rather than the run at 3 a.m. :func:`is_literal`
tells the two apart; the ``read_*`` functions turn a rendered value (often text: Jinja renders
``{{ params.dry_run }}`` to ``"True"``) into the value the sync needs, or raise a message that names the
argument and what it accepts. Plain Python, no Airflow import.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from typing import Any

from airflow_provider_fbca.operators.sync_audience_checks import check_mapping
from airflow_provider_fbca.sync.plan import SyncMode

_TEMPLATE_MARKERS = ("{{", "{%")


def is_literal(value: Any) -> bool:
    """
    Whether ``value`` is final as given: no Jinja in it (``{{`` or ``{%``), and not an ``XComArg`` or other
    object that Airflow resolves when the task runs.

    :param value: an argument as given to the operator.
    """
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        return not any(marker in value for marker in _TEMPLATE_MARKERS)
    if isinstance(value, Mapping):
        return all(is_literal(key) and is_literal(item) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return all(is_literal(item) for item in value)
    return False


def read_bool(name: str, value: Any) -> bool:
    """
    A boolean argument: a bool, or the text ``true`` / ``false`` in any case (what Jinja renders).

    :param name: the argument's name, for the message.
    :param value: the rendered value.
    """
    if isinstance(value, bool):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text in ("true", "false"):
        return text == "true"
    raise ValueError(f"{name} must be true or false; it rendered to {value!r}.")


def read_sync_mode(value: Any) -> SyncMode:
    """
    ``sync_mode`` in any case: ``mirror``, ``upsert`` or ``delete``.

    :param value: the rendered value (a string or a :class:`SyncMode`).
    """
    if isinstance(value, SyncMode):
        return value
    text = str(value).strip().lower()
    try:
        return SyncMode(text)
    except ValueError:
        modes = ", ".join(repr(mode.value) for mode in SyncMode)
        raise ValueError(f"sync_mode must be one of {modes}; it is {value!r}.") from None


def read_optional_text(value: Any) -> Any:
    """
    An optional text argument: an empty rendering (a param left empty) means not given (None).

    Anything but text is returned as it is, for the argument's own check to refuse.

    :param value: the rendered value.
    """
    if not isinstance(value, str):
        return value
    return value.strip() or None


def read_mapping(value: Any, membership_column: Any = None) -> dict[str, str]:
    """
    ``mapping``: a dict of match key -> column, or the text a template rendered from one, checked by
    :func:`~airflow_provider_fbca.operators.sync_audience_checks.check_mapping`.

    Jinja renders ``{{ params.mapping }}`` to the dict's ``repr`` (or to JSON with ``tojson``); both are
    read back, as data only (``ast.literal_eval``, never ``eval``).

    :param value: the rendered value.
    :param membership_column: the membership column (checked with the mapping), or None.
    """
    if isinstance(value, str):
        value = _parse_literal(value)
    return check_mapping(value, membership_column)


def _parse_literal(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        raise ValueError(
            "mapping must be a dict of match key -> column; the template rendered text that is neither "
            "JSON nor a Python dict literal."
        ) from None


def check_audience_choice(audience_id: Any, audience_name: Any) -> None:
    """
    Exactly one of ``audience_id`` and ``audience_name``.

    :param audience_id: the rendered (or plain) audience id, or None.
    :param audience_name: the rendered (or plain) audience name, or None.
    """
    if audience_id and audience_name:
        raise ValueError(
            "Give audience_id or audience_name, not both: the id names one audience, and the name could "
            "name another."
        )
    if not audience_id and not audience_name:
        raise ValueError("Give audience_id or audience_name.")
