"""THE table of match keys: every fact about a key, read by the normalizer, batches, docs and tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_fbca.identifiers.address import (
    normalize_city,
    normalize_country,
    normalize_state,
    normalize_zip,
)
from airflow_provider_fbca.identifiers.contact import (
    name_normalizer,
    normalize_email,
    normalize_first_initial,
    normalize_gender,
)
from airflow_provider_fbca.identifiers.dates import (
    normalize_birth_day,
    normalize_birth_month,
    normalize_birth_year,
)
from airflow_provider_fbca.identifiers.ids import (
    normalize_extern_id,
    normalize_lookalike_value,
    normalize_madid,
    opaque_id_normalizer,
)
from airflow_provider_fbca.identifiers.phone import normalize_phone
from airflow_provider_fbca.identifiers.processing import (
    location_in_payload,
    normalize_processing_country,
    normalize_processing_options,
    normalize_processing_state,
    options_in_payload,
)
from airflow_provider_fbca.identifiers.reasons import (
    APPUID_INVALID,
    FN_INVALID,
    LN_INVALID,
    PAGEUID_INVALID,
    Normalizer,
)


@dataclass(frozen=True)
class MatchKey:
    """
    One of Meta's customer-file match keys.

    :param name: Meta's key as sent in the payload's schema (``EMAIL``, ``PHONE``, ...).
    :param aliases: friendly names accepted in mappings (``email``, ``phone``, ...).
    :param hashed: whether the wire value is the SHA-256 of the normalized value.
    :param strong: whether the key identifies a person on its own.
    :param rule: one-line description of the normalization (the README's mapping reference).
    :param normalizer: ``(value, country) -> str | Dropped``; ``country`` is upper-case ISO alpha-2 or None.
    :param uses_country: whether the row's country changes the result (PHONE, ST, ZIP).
    :param repetitive: whether values repeat across rows (names, places, dates), so the batch path caches
        their prepared form.
    :param identifier: whether a surviving value keeps its row (all keys but EXTERN_ID,
        LOOKALIKE_VALUE and the data processing options).
    :param payload_value: how the normalized text goes into the upload's JSON when Meta wants another
        type there (a list, an integer); None: as text.
    """

    name: str
    aliases: tuple[str, ...]
    hashed: bool
    strong: bool
    rule: str
    normalizer: Normalizer = field(repr=False, compare=False)
    uses_country: bool = False
    repetitive: bool = False
    identifier: bool = True
    payload_value: Callable[[str], Any] | None = field(default=None, repr=False, compare=False)


MATCH_KEYS: tuple[MatchKey, ...] = (
    MatchKey(
        "EXTERN_ID",
        ("external_id",),
        hashed=False,
        strong=True,
        rule="Trimmed, otherwise exactly as given (case kept); never hashed.",
        normalizer=normalize_extern_id,
        identifier=False,
    ),
    MatchKey(
        "EMAIL",
        ("email",),
        hashed=True,
        strong=True,
        rule="Trimmed, lowercase; a value that is not an e-mail address is dropped.",
        normalizer=normalize_email,
    ),
    MatchKey(
        "PHONE",
        ("phone",),
        hashed=True,
        strong=True,
        rule=(
            "Digits only with the calling code, no `+`, no leading zeros. Written with `+` or `00`: that "
            "calling code. Otherwise, with the row's (or default) country: its national number when valid, "
            "else the digits as `+digits` when that is a valid number (E.164 stored without `+`, as text or "
            "number), else the national number if possible. With no country: `+digits` when valid, else "
            "dropped (`phone.no_country_code`). Trunk `(0)` removed; impossible numbers (too short, too "
            "long, all zeros) dropped."
        ),
        normalizer=normalize_phone,
        uses_country=True,
    ),
    MatchKey(
        "GEN",
        ("gender",),
        hashed=True,
        strong=False,
        rule="`m` or `f` from m/male/man/boy and f/female/woman/girl; anything else dropped, never guessed.",
        normalizer=normalize_gender,
        repetitive=True,
    ),
    MatchKey(
        "DOBY",
        ("birth_year",),
        hashed=True,
        strong=False,
        rule="Four digits, 1900 to the current year.",
        normalizer=normalize_birth_year,
        repetitive=True,
    ),
    MatchKey(
        "DOBM",
        ("birth_month",),
        hashed=True,
        strong=False,
        rule="`01`-`12`, from numbers, English month names and three-letter abbreviations.",
        normalizer=normalize_birth_month,
        repetitive=True,
    ),
    MatchKey(
        "DOBD",
        ("birth_day",),
        hashed=True,
        strong=False,
        rule="`01`-`31`, zero-padded.",
        normalizer=normalize_birth_day,
        repetitive=True,
    ),
    MatchKey(
        "LN",
        ("last_name",),
        hashed=True,
        strong=False,
        rule="Lowercase, punctuation, spaces and digits removed; letters of any script kept (UTF-8).",
        normalizer=name_normalizer(LN_INVALID),
        repetitive=True,
    ),
    MatchKey(
        "FN",
        ("first_name",),
        hashed=True,
        strong=False,
        rule="Lowercase, punctuation, spaces and digits removed; letters of any script kept (UTF-8).",
        normalizer=name_normalizer(FN_INVALID),
        repetitive=True,
    ),
    MatchKey(
        "FI",
        ("first_initial",),
        hashed=True,
        strong=False,
        rule="The first letter of the value normalized as a first name.",
        normalizer=normalize_first_initial,
        repetitive=True,
    ),
    MatchKey(
        "CT",
        ("city",),
        hashed=True,
        strong=False,
        rule=(
            "Lowercase a-z only: diacritics folded (`São Paulo` -> `saopaulo`), no spaces, punctuation or "
            "digits; a city with no Latin letters is dropped (`ct.not_latin`)."
        ),
        normalizer=normalize_city,
        repetitive=True,
    ),
    MatchKey(
        "ST",
        ("state",),
        hashed=True,
        strong=False,
        rule=(
            "US: the two-letter state code, from the code or the full name with or without spaces "
            "(an unknown US state is dropped); elsewhere lowercase without punctuation or spaces."
        ),
        normalizer=normalize_state,
        uses_country=True,
        repetitive=True,
    ),
    MatchKey(
        "ZIP",
        ("zip", "postal_code"),
        hashed=True,
        strong=False,
        rule=(
            "Lowercase, no spaces. US (and PR, GU, VI, AS, MP): first five digits, leading zeros restored. "
            "UK: outward code + "
            "first digit of the inward code (`SW1A 1AA` -> `sw1a1`). Elsewhere: as written."
        ),
        normalizer=normalize_zip,
        uses_country=True,
        repetitive=True,
    ),
    MatchKey(
        "COUNTRY",
        ("country",),
        hashed=True,
        strong=False,
        rule="ISO 3166-1 alpha-2, lowercase, from alpha-2/alpha-3 codes or English names; unknown dropped.",
        normalizer=normalize_country,
        repetitive=True,
    ),
    MatchKey(
        "MADID",
        ("mobile_advertiser_id",),
        hashed=False,
        strong=True,
        rule=(
            "Letters, digits and hyphens, 8-64 characters, lowercase (a UUID without hyphens gets them); "
            "never hashed; the all-zero (tracking limited) id and hashes are dropped."
        ),
        normalizer=normalize_madid,
    ),
    MatchKey(
        "APPUID",
        ("app_user_id",),
        hashed=False,
        strong=True,
        rule="As given (trimmed); never hashed. Needs the payload's `app_ids`.",
        normalizer=opaque_id_normalizer(APPUID_INVALID),
    ),
    MatchKey(
        "PAGEUID",
        ("page_user_id",),
        hashed=False,
        strong=True,
        rule="As given (trimmed); never hashed. Needs the payload's `page_ids`.",
        normalizer=opaque_id_normalizer(PAGEUID_INVALID),
    ),
    MatchKey(
        "LOOKALIKE_VALUE",
        ("value",),
        hashed=False,
        strong=False,
        rule="A non-negative number (value-based audiences); a row without one is rejected.",
        normalizer=normalize_lookalike_value,
        identifier=False,
    ),
    MatchKey(
        "DATA_PROCESSING_OPTIONS",
        ("data_processing_options",),
        hashed=False,
        strong=False,
        rule=(
            'Limited Data Use: `LDU` (from `["LDU"]`, its JSON text or `LDU`, any case) or none (`[]`, '
            "empty); sent as a list. With LDU the row needs a documented location (below); a row whose "
            "options are unusable is rejected (`row.invalid_data_processing_options`), never sent without them."
        ),
        normalizer=normalize_processing_options,
        repetitive=True,
        identifier=False,
        payload_value=options_in_payload,
    ),
    MatchKey(
        "DATA_PROCESSING_OPTIONS_COUNTRY",
        ("data_processing_options_country",),
        hashed=False,
        strong=False,
        rule="With LDU: `1` (the United States) or `0` (Meta geolocates); sent as an integer.",
        normalizer=normalize_processing_country,
        repetitive=True,
        identifier=False,
        payload_value=location_in_payload,
    ),
    MatchKey(
        "DATA_PROCESSING_OPTIONS_STATE",
        ("data_processing_options_state",),
        hashed=False,
        strong=False,
        rule="With LDU: `1000` (California, with country `1`) or `0` (with country `0`); sent as an integer.",
        normalizer=normalize_processing_state,
        repetitive=True,
        identifier=False,
        payload_value=location_in_payload,
    ),
)

#: The pseudo-key for a whole date of birth: a date (or "YYYY-MM-DD") that fills DOBY, DOBM and DOBD.
DATE_OF_BIRTH = "date_of_birth"
DATE_OF_BIRTH_ALIASES = ("date_of_birth", "dob")
DATE_OF_BIRTH_KEYS = ("DOBY", "DOBM", "DOBD")

_KEYS_BY_NAME: dict[str, MatchKey] = {}
for _key in MATCH_KEYS:
    for _spelling in (_key.name, *_key.aliases):
        _KEYS_BY_NAME[_spelling.lower()] = _key
del _key, _spelling


def match_key(name_or_alias: str) -> MatchKey:
    """
    The match key named ``name_or_alias`` (Meta's name or an alias, any case).

    :param name_or_alias: e.g. ``"EMAIL"``, ``"email"``, ``"postal_code"``.
    :raises ValueError: for an unknown name; the message lists the valid ones.
    """
    key = _KEYS_BY_NAME.get(str(name_or_alias).strip().lower())
    if key is None:
        valid = ", ".join(f"{k.name} ({'/'.join(k.aliases)})" for k in MATCH_KEYS)
        raise ValueError(
            f"Unknown match key {name_or_alias!r}. Valid keys: {valid}; and {DATE_OF_BIRTH} (dob), "
            "which fills DOBY, DOBM and DOBD from one date."
        )
    return key
