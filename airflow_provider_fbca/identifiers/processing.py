"""
Limited Data Use: Meta's ``DATA_PROCESSING_OPTIONS`` and the location they apply to, per row or per sync.

Meta documents the customer-file columns ``DATA_PROCESSING_OPTIONS`` (``["LDU"]``, or ``[]`` for none),
``DATA_PROCESSING_OPTIONS_COUNTRY`` and ``DATA_PROCESSING_OPTIONS_STATE`` (integers): with LDU, either
1 and 1000 (the United States, California) or 0 and 0 (Meta geolocates the person). Nothing else is
documented, so nothing else is sent: a row whose options are unusable is rejected, never sent without
them (that would process a Californian's data without the restriction).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from airflow_provider_fbca.identifiers.reasons import (
    PROCESSING_COUNTRY_INVALID,
    PROCESSING_OPTIONS_INVALID,
    PROCESSING_STATE_INVALID,
    Dropped,
)
from airflow_provider_fbca.identifiers.text import clean, missing_or

OPTIONS = "DATA_PROCESSING_OPTIONS"
COUNTRY = "DATA_PROCESSING_OPTIONS_COUNTRY"
STATE = "DATA_PROCESSING_OPTIONS_STATE"
#: The three keys, in the order :func:`usable_processing` takes them.
PROCESSING_KEYS = (OPTIONS, COUNTRY, STATE)
LDU = "LDU"
#: Meta's documented locations of LDU, (country, state) -> what it means.
LDU_LOCATIONS = {(1, 1000): "the United States, California", (0, 0): "geolocated by Meta"}
_LDU_WIRE_LOCATIONS = frozenset((str(country), str(state)) for country, state in LDU_LOCATIONS)


def normalize_processing_options(value: object, country: str | None) -> str | Dropped:
    """DATA_PROCESSING_OPTIONS: ``LDU`` from ``["LDU"]``, ``'["LDU"]'`` or ``LDU`` (any case); "" for none."""
    if isinstance(value, (list, tuple)):
        items: Sequence[Any] = value
    else:
        text = clean(value)
        if not text:
            return missing_or(text, PROCESSING_OPTIONS_INVALID)
        if text.startswith("["):
            try:
                items = json.loads(text)
            except ValueError:
                return PROCESSING_OPTIONS_INVALID
        else:
            items = [text]
    if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
        return PROCESSING_OPTIONS_INVALID
    options = [item.strip().upper() for item in items]
    if not options:
        return ""
    return LDU if options == [LDU] else PROCESSING_OPTIONS_INVALID


def _documented_integer(values: frozenset[int], invalid: Dropped) -> Any:
    def normalize_integer(value: object, country: str | None) -> str | Dropped:
        if isinstance(value, bool):
            return invalid
        text = clean(value)
        if not text:
            return missing_or(text, invalid)
        if not (text.isascii() and text.isdigit()) or int(text) not in values:
            return invalid
        return str(int(text))

    return normalize_integer


normalize_processing_country = _documented_integer(
    frozenset(country for country, _ in LDU_LOCATIONS), PROCESSING_COUNTRY_INVALID
)
normalize_processing_state = _documented_integer(
    frozenset(state for _, state in LDU_LOCATIONS), PROCESSING_STATE_INVALID
)


def usable_processing(options: str, country: str, state: str) -> bool:
    """
    Whether a row's normalized options can be sent: none, or LDU at a documented location.

    :param options: ``"LDU"`` or "" (none).
    :param country: the row's country code as text ("" when missing).
    :param state: the row's state code as text ("" when missing).
    """
    return not options or (country, state) in _LDU_WIRE_LOCATIONS


def options_in_payload(options: str) -> list[str]:
    """How Meta takes DATA_PROCESSING_OPTIONS: a list (``["LDU"]`` or ``[]``)."""
    return [options] if options else []


def location_in_payload(code: str) -> int:
    """How Meta takes the country and state codes: integers (0 where the row has none)."""
    return int(code) if code else 0


def check_data_processing_options(options: object, country: object, state: object) -> None:
    """
    Check a sync's data processing options against Meta's documented values.

    :param options: ``["LDU"]``, ``[]`` (none) or None (not sent).
    :param country: with LDU, 1 (the United States) or 0 (Meta geolocates).
    :param state: with LDU, 1000 (California) or 0 (Meta geolocates).
    :raises ValueError: naming the parameter and the values Meta documents.
    """
    locations = " or ".join(f"{c}/{s} ({meaning})" for (c, s), meaning in LDU_LOCATIONS.items())
    if options is None or (isinstance(options, list | tuple) and not options):
        if country is not None or state is not None:
            raise ValueError(
                "data_processing_options_country and data_processing_options_state go with "
                'data_processing_options=["LDU"] only; set that, or leave them out.'
            )
        return
    if not isinstance(options, list | tuple) or [str(item).upper() for item in options] != [LDU]:
        raise ValueError(
            f'data_processing_options must be ["LDU"] (Limited Data Use) or [] (none), not {options!r}.'
        )
    if (country, state) not in LDU_LOCATIONS or isinstance(country, bool) or isinstance(state, bool):
        raise ValueError(
            'With data_processing_options=["LDU"], set data_processing_options_country and '
            f"data_processing_options_state to {locations}; not {country!r}/{state!r}."
        )
