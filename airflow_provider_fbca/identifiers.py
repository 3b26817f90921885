"""
Meta's customer-file match keys: normalized by Meta's documented rules and hashed exactly as Meta expects.

Matching is the product: Meta only matches a value that was normalized the way Meta normalizes its own
data before hashing, so a byte off and a person is lost from the audience. This module is the single
source of truth for the match keys: :data:`MATCH_KEYS` is read by the normalizer, the payload builder,
the README's mapping reference and the tests.

Plain Python with no Airflow import. The public surface:

* :func:`match_key`, :func:`normalize`, :func:`prepare` (one value at a time);
* :class:`RowPreparer` / :func:`prepare_rows` (the operator's hot path: whole batches of rows, with counts
  of the values dropped and the rows rejected, by reason; one bad value never fails a batch);
* :func:`mapping_reference_markdown` (README's mapping reference; ``python -m
  airflow_provider_fbca.identifiers --markdown`` prints it, ``--update-readme`` rewrites it in place).
"""

from __future__ import annotations

import collections
import hashlib
import math
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation

import phonenumbers
from phonenumbers import PhoneMetadata
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE, NumberParseException, ValidationResult

from airflow_provider_fbca import geo

__all__ = [
    "DATE_OF_BIRTH",
    "DROP_REASONS",
    "MATCH_KEYS",
    "ROW_NO_IDENTIFIER",
    "ROW_NO_VALUE",
    "Dropped",
    "MatchKey",
    "PreparedBatch",
    "RowPreparer",
    "mapping_reference_markdown",
    "match_key",
    "normalize",
    "normalize_with_reason",
    "prepare",
    "prepare_rows",
]


class Dropped:
    """
    A value that is not a usable identifier of its kind, with the reason it was dropped.

    Normalizers return it instead of raising, so one bad value never fails a batch; the reasons are
    counted per batch (``"email.invalid"``, ``"phone.no_country_code"``, ...).

    :param reason: ``"<key>.<why>"``, lowercase.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Dropped({self.reason!r})"


#: ``(value, country) -> str | Dropped``: the normalized text ("" when the value is missing) or why it
#: was dropped; ``country`` is an upper-case ISO alpha-2 code or None. Cell preparers share the shape.
Normalizer = Callable[[object, str | None], str | Dropped]

_HEX_DIGITS = "0123456789abcdefABCDEF"


def _is_sha256_hex(text: str) -> bool:
    """Whether ``text`` already is a SHA-256 hex digest (64 hex characters, any case)."""
    return len(text) == 64 and not text.strip(_HEX_DIGITS)


def _sha256_hex(text: str) -> str:
    """The wire form of a hashed key: SHA-256 of the UTF-8 bytes, 64 lowercase hex characters."""
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------
# Typed values from database drivers -> text
# ---------------------------------------------------------------------------------------------------

# Invisible characters that copy-pasted data carries at the ends of values; str.strip() keeps them.
_INVISIBLE_EDGES = "\u200b\u200e\u200f\u2060\ufeff"


def _as_text(value: object) -> str | None:
    """
    The text of a typed value: "" when it is missing, None when it cannot be read as text.

    Integral floats and Decimals lose their ".0" (12345.0 is "12345"); NaN (how pandas spells a missing
    value) is missing; infinities and undecodable bytes are unusable.

    :param value: a value as a database driver returns it.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        try:
            return str(int(value))
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            return None
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if math.isinf(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, Decimal):
        if value.is_nan():
            return ""
        if value.is_infinite():
            return None
        return _decimal_text(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return str(value)


def _decimal_text(value: Decimal) -> str:
    """A finite Decimal as plain digits, without exponent or trailing zeros ("44.50" is "44.5")."""
    if not value:
        return "0"  # also for Decimal("-0") and "0E-7"
    return format(value.normalize(), "f")


def _clean(value: object) -> str | None:
    """
    Text as every key sees it first: Unicode NFC, then trimmed. "" when missing, None when unusable.

    :param value: a value as a database driver returns it.
    """
    text = value if value.__class__ is str else _as_text(value)
    if not text:
        return text
    if text.isascii():
        return text.strip()
    return unicodedata.normalize("NFC", text).strip().strip(_INVISIBLE_EDGES).strip()


def _missing_or(text: str | None, dropped: Dropped) -> str | Dropped:
    """For an empty ``_clean`` result: "" when the value was missing, ``dropped`` when it was unusable."""
    return "" if text is not None else dropped


def _letters(text: str, *, keep_digits: bool = False) -> str:
    """
    Only the letters of ``text`` (any script, with their combining marks), and digits if asked.

    Removes spaces, punctuation and symbols; the caller lowercases.
    """
    if text.isascii():
        if text.isalpha() or (keep_digits and text.isalnum()):
            return text
        return "".join(ch for ch in text if ch.isalpha() or (keep_digits and ch.isdigit()))
    return "".join(
        ch
        for ch in text
        if ch.isalpha()
        or unicodedata.category(ch)[0] == "M"
        or (keep_digits and unicodedata.category(ch) == "Nd")
    )


def _ascii_letters_key(text: str) -> str:
    """A lookup key for names in tables: accents folded, lowercase a-z only ("Côte d'Ivoire" -> "cotedivoire")."""
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in text.lower() if "a" <= ch <= "z")


# ---------------------------------------------------------------------------------------------------
# The normalizers, one per key. Each takes (value, country) and returns the normalized text, "" when
# the value is missing, or a Dropped. ``country`` is an upper-case ISO alpha-2 code or None.
# ---------------------------------------------------------------------------------------------------


def _normalize_extern_id(value: object, country: str | None) -> str | Dropped:
    """EXTERN_ID: trimmed, otherwise exactly as given (no case folding, no Unicode normalization)."""
    text = value if value.__class__ is str else _as_text(value)
    if text is None:
        return _EXTERN_ID_INVALID
    return text.strip()


def _normalize_opaque_id(reason: Dropped) -> Normalizer:
    """APPUID, PAGEUID: ids Meta issued, sent as given (trimmed), never hashed."""

    def normalize_id(value: object, country: str | None) -> str | Dropped:
        text = _clean(value)
        return text if text is not None else reason

    return normalize_id


# An address with one "@", no spaces or separators a list would have, and a dotted domain whose last
# label has at least two characters. Deliberately not RFC 5322: Meta matches mailbox addresses.
_EMAIL = re.compile(r"[^\s@,;:<>()\[\]\\\"]+@(?:[^\s@,;:<>()\[\]\\\".]+\.)+[^\s@,;:<>()\[\]\\\".]{2,}")


def _normalize_email(value: object, country: str | None) -> str | Dropped:
    """EMAIL: trimmed, lowercase; what is not an e-mail address is dropped."""
    text = _clean(value)
    if not text:
        return _missing_or(text, _EMAIL_INVALID)
    if _is_sha256_hex(text):
        return text.lower()
    email = text.lower().rstrip(".")  # a sentence's full stop after the address is not part of it
    if _EMAIL.fullmatch(email) is None:
        return _EMAIL_INVALID
    return email


_GENDERS = {
    "m": "m",
    "male": "m",
    "man": "m",
    "boy": "m",
    "f": "f",
    "female": "f",
    "woman": "f",
    "girl": "f",
}


def _normalize_gender(value: object, country: str | None) -> str | Dropped:
    """GEN: ``m`` or ``f`` from the common spellings; anything else is dropped, never guessed."""
    text = _clean(value)
    if not text:
        return _missing_or(text, _GEN_UNKNOWN)
    if _is_sha256_hex(text):
        return text.lower()
    return _GENDERS.get(text.lower().rstrip("."), _GEN_UNKNOWN)


def _birth_year_range() -> range:
    return range(1900, date.today().year + 1)


def _normalize_birth_year(value: object, country: str | None) -> str | Dropped:
    """DOBY: four digits, 1900 to the current year."""
    if isinstance(value, date):
        value = value.year
    text = _clean(value)
    if not text:
        return _missing_or(text, _DOBY_INVALID)
    if _is_sha256_hex(text):
        return text.lower()
    if not (len(text) == 4 and text.isascii() and text.isdigit()):
        return _DOBY_INVALID
    if int(text) not in _birth_year_range():
        return _DOBY_OUT_OF_RANGE
    return text


_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}


def _two_digit_number(text: str, upper: int, invalid: Dropped, out_of_range: Dropped) -> str | Dropped:
    """A number 1..``upper`` as two zero-padded digits ("7" and "07" give "07")."""
    if not (text.isascii() and text.isdigit()):
        return invalid
    if len(text.lstrip("0")) > 2:
        return out_of_range
    number = int(text)
    if not 1 <= number <= upper:
        return out_of_range
    return f"{number:02d}"


def _normalize_birth_month(value: object, country: str | None) -> str | Dropped:
    """DOBM: ``01``-``12`` from numbers, English month names and three-letter abbreviations."""
    if isinstance(value, date):
        value = value.month
    text = _clean(value)
    if not text:
        return _missing_or(text, _DOBM_INVALID)
    if _is_sha256_hex(text):
        return text.lower()
    month = _MONTHS.get(text.lower().rstrip("."))
    if month is not None:
        return f"{month:02d}"
    return _two_digit_number(text, 12, _DOBM_INVALID, _DOBM_OUT_OF_RANGE)


def _normalize_birth_day(value: object, country: str | None) -> str | Dropped:
    """DOBD: ``01``-``31``."""
    if isinstance(value, date):
        value = value.day
    text = _clean(value)
    if not text:
        return _missing_or(text, _DOBD_INVALID)
    if _is_sha256_hex(text):
        return text.lower()
    return _two_digit_number(text, 31, _DOBD_INVALID, _DOBD_OUT_OF_RANGE)


def _normalize_name(invalid: Dropped) -> Normalizer:
    """FN, LN: lowercase, letters of any script kept (UTF-8), punctuation, spaces and digits removed."""

    def normalize_name(value: object, country: str | None) -> str | Dropped:
        text = _clean(value)
        if not text:
            return _missing_or(text, invalid)
        if _is_sha256_hex(text):
            return text.lower()
        return _letters(text.lower()) or invalid

    return normalize_name


def _normalize_first_initial(value: object, country: str | None) -> str | Dropped:
    """FI: the first letter of the value normalized as a first name ("J." and "John" give "j")."""
    text = _clean(value)
    if not text:
        return _missing_or(text, _FI_INVALID)
    if _is_sha256_hex(text):
        return text.lower()
    return _letters(text.lower())[:1] or _FI_INVALID


def _normalize_city(value: object, country: str | None) -> str | Dropped:
    """CT: lowercase letters only (any script); no spaces, punctuation or digits."""
    text = _clean(value)
    if not text:
        return _missing_or(text, _CT_INVALID)
    if _is_sha256_hex(text):
        return text.lower()
    return _letters(text.lower()) or _CT_INVALID


def _state_lookup() -> dict[str, str]:
    table: dict[str, str] = {}
    for code, name in geo.US_STATES.items():
        table[_ascii_letters_key(code)] = code.lower()
        table[_ascii_letters_key(name)] = code.lower()
    for alias, code in geo.US_STATE_ALIASES.items():
        table[_ascii_letters_key(alias)] = code.lower()
    return table


_US_STATES = _state_lookup()


def _normalize_state(value: object, country: str | None) -> str | Dropped:
    """
    ST: in the US, the two-letter ANSI code ("New York", "newyork", "NY" give "ny"); elsewhere lowercase
    without punctuation or spaces. With no country, a full US state name still becomes its code.
    """
    text = _clean(value)
    if not text:
        return _missing_or(text, _ST_UNKNOWN)
    if _is_sha256_hex(text):
        return text.lower()
    if country == "US" or country is None:
        code = _US_STATES.get(_ascii_letters_key(text))
        if code is not None:
            return code
        if country == "US":
            return _ST_UNKNOWN
    return _letters(text.lower(), keep_digits=True) or _ST_UNKNOWN


_US_ZIP_PLUS_4 = re.compile(r"([0-9]{3,5})-?[0-9]{4}")


def _normalize_zip(value: object, country: str | None) -> str | Dropped:
    """
    ZIP: lowercase without spaces. US: the first five digits, with the leading zeros a number lost put
    back. UK: outward code plus the first digit of the inward code ("SW1A 1AA" gives "sw1a1").
    """
    text = _clean(value)
    if not text:
        return _missing_or(text, _ZIP_INVALID)
    if _is_sha256_hex(text):
        return text.lower()
    compact = "".join(text.split())
    if country in geo.US_ZIP_COUNTRIES:
        return _us_zip(compact)
    if country in geo.UK_POSTCODE_COUNTRIES:
        return _uk_postcode(compact)
    if country is None and len(compact) == 10 and _US_ZIP_PLUS_4.fullmatch(compact):
        return compact[:5]  # ZIP+4 exists only in the US
    return compact.lower()


def _us_zip(compact: str) -> str | Dropped:
    """The five-digit US ZIP of "02134", "2134" (a number that lost its zero), "02134-1234", "021341234"."""
    if compact.isascii() and compact.isdigit():
        if 3 <= len(compact) <= 5:
            return compact.zfill(5)
        if 7 <= len(compact) <= 9:  # ZIP+4 stored as a number
            return compact.zfill(9)[:5]
        return _ZIP_INVALID
    plus_4 = _US_ZIP_PLUS_4.fullmatch(compact)
    if plus_4 is not None:
        return plus_4.group(1).zfill(5)
    return _ZIP_INVALID


def _uk_postcode(compact: str) -> str | Dropped:
    """Area/District/Sector of a UK postcode: the outward code plus the inward code's first digit."""
    upper = compact.upper()
    full = geo.UK_POSTCODE.fullmatch(upper)
    if full is not None:
        return (full.group(1) + full.group(2)).lower()
    if geo.UK_OUTWARD_CODE.fullmatch(upper):
        return upper.lower()
    return _ZIP_INVALID


def _country_lookup() -> dict[str, str]:
    table: dict[str, str] = {}
    for alpha_2, alpha_3, names in geo.ISO_COUNTRIES:
        for spelling in (alpha_2, alpha_3, *names):
            table.setdefault(_ascii_letters_key(spelling), alpha_2)
    for alias, alpha_2 in geo.COUNTRY_ALIASES.items():
        table.setdefault(_ascii_letters_key(alias), alpha_2)
    return table


_COUNTRIES = _country_lookup()


def _country_code(text: str) -> str | None:
    """The upper-case ISO alpha-2 code for a code or English name in any case, or None."""
    key = _ascii_letters_key(text)
    code = _COUNTRIES.get(key)
    if code is None and key.startswith("the") and text.lower().startswith("the "):
        code = _COUNTRIES.get(key[3:])  # "The Netherlands", "the Gambia"
    return code


def _normalize_country(value: object, country: str | None) -> str | Dropped:
    """COUNTRY: ISO 3166-1 alpha-2, lowercase, from alpha-2 or alpha-3 codes or English names."""
    text = _clean(value)
    if not text:
        return _missing_or(text, _COUNTRY_UNKNOWN)
    if _is_sha256_hex(text):
        return text.lower()
    code = _country_code(text)
    return code.lower() if code is not None else _COUNTRY_UNKNOWN


def _normalize_madid(value: object, country: str | None) -> str | Dropped:
    """
    MADID: an IDFA or Android advertising id, lowercase with hyphens, never hashed. The all-zero id
    (what iOS reports when the user limits ad tracking) and hashes are dropped: they match nobody.
    """
    text = _clean(value)
    if not text:
        return _missing_or(text, _MADID_INVALID)
    try:
        madid = uuid.UUID(text)
    except ValueError:
        return _MADID_INVALID
    if madid.int == 0:
        return _MADID_INVALID
    return str(madid)


def _normalize_lookalike_value(value: object, country: str | None) -> str | Dropped:
    """LOOKALIKE_VALUE: a non-negative number, written without exponent or trailing zeros."""
    if isinstance(value, bool):
        return _LOOKALIKE_VALUE_INVALID
    text = _clean(value)
    if not text:
        return _missing_or(text, _LOOKALIKE_VALUE_INVALID)
    try:
        number = Decimal(text)
    except InvalidOperation:
        return _LOOKALIKE_VALUE_INVALID
    if not number.is_finite():
        return _LOOKALIKE_VALUE_INVALID
    if number < 0:
        return _LOOKALIKE_VALUE_NEGATIVE
    if number.adjusted() > _MAX_LOOKALIKE_VALUE_DIGITS:
        return _LOOKALIKE_VALUE_INVALID
    return _decimal_text(number)


_MAX_LOOKALIKE_VALUE_DIGITS = 18  # a customer value above 10**18 is a data error, not a big spender


# ---------------------------------------------------------------------------------------------------
# PHONE
#
# ``phonenumbers`` is the reference (Google's libphonenumber metadata) but parsing one number costs
# 25-50 us, more than the SDK spends on a whole row. ``_phone_fast`` replays the steps of
# ``phonenumbers.parse`` + ``is_possible_number_with_reason`` for the common shape (an optional "+",
# then digits and the separators " -.()/") from the same metadata, precompiled per region; whatever it
# is not sure about goes to ``_phone_reference``. A test checks that both agree on every region's
# example numbers in many writings.
# ---------------------------------------------------------------------------------------------------

# Separators the fast path removes; phonenumbers treats each of them as punctuation.
_PHONE_SEPARATORS = str.maketrans("", "", " -.()/")
_MIN_NATIONAL_LENGTH = 2  # phonenumbers' _MIN_LENGTH_FOR_NSN
_MAX_NATIONAL_LENGTH = 17  # phonenumbers' _MAX_LENGTH_FOR_NSN


class _PhonePlan:
    """The numbering plan of one region (or non-geographic calling code), compiled for the fast path."""

    __slots__ = (
        "calling_code",
        "international_prefix",
        "lengths",
        "local_lengths",
        "national_pattern",
        "national_prefix",
        "transforms_prefix",
    )

    def __init__(self, metadata: PhoneMetadata) -> None:
        self.calling_code = str(metadata.country_code)
        self.international_prefix = _compile_or_none(metadata.international_prefix)
        self.national_prefix = _compile_or_none(metadata.national_prefix_for_parsing)
        self.transforms_prefix = bool(metadata.national_prefix_transform_rule)
        general = metadata.general_desc
        self.national_pattern = _compile_or_none(general.national_number_pattern)
        self.lengths = tuple(general.possible_length)
        self.local_lengths = frozenset(general.possible_length_local_only)

    def matches(self, national: str) -> bool:
        """phonenumbers' ``_match_national_number(national, general_desc, False)``."""
        return self.national_pattern is not None and self.national_pattern.fullmatch(national) is not None

    def length_result(self, national: str) -> int:
        """phonenumbers' ``_test_number_length(national, metadata)`` for the type UNKNOWN."""
        length = len(national)
        if length in self.local_lengths:
            return ValidationResult.IS_POSSIBLE_LOCAL_ONLY
        if self.lengths[0] == length:
            return ValidationResult.IS_POSSIBLE
        if self.lengths[0] > length:
            return ValidationResult.TOO_SHORT
        if self.lengths[-1] < length:
            return ValidationResult.TOO_LONG
        return ValidationResult.IS_POSSIBLE if length in self.lengths[1:] else ValidationResult.INVALID_LENGTH

    def strip_national_prefix(self, number: str) -> str:
        """phonenumbers' ``_maybe_strip_national_prefix_carrier_code`` (plans without a transform rule)."""
        if not number or self.national_prefix is None:
            return number
        prefix = self.national_prefix.match(number)
        if prefix is None:
            return number
        rest = number[prefix.end() :]
        if self.matches(number) and not self.matches(rest):
            return number
        return rest


def _compile_or_none(pattern: str | None) -> re.Pattern[str] | None:
    return re.compile(pattern) if pattern else None


class _LazyPlans(dict):
    """Plans compiled on first use: compiling all 245 regions up front would cost every DAG parse."""

    def __init__(self, load: Callable[[str], _PhonePlan | None]) -> None:
        super().__init__()
        self._load = load

    def __missing__(self, key: str) -> _PhonePlan | None:
        plan = self[key] = self._load(key)
        return plan


def _load_region_plan(region: str) -> _PhonePlan | None:
    metadata = PhoneMetadata.metadata_for_region(region, None)
    return _PhonePlan(metadata) if metadata is not None else None


def _load_calling_code_plan(calling_code: str) -> _PhonePlan | None:
    """The plan phonenumbers checks a calling code's numbers against: its main region's."""
    code = int(calling_code)
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, COUNTRY_CODE_TO_REGION_CODE[code][0])
    return _PhonePlan(metadata) if metadata is not None else None


_PHONE_REGIONS = _LazyPlans(_load_region_plan)
_PHONE_CALLING_CODES = _LazyPlans(_load_calling_code_plan)
_CALLING_CODES = frozenset(str(code) for code in COUNTRY_CODE_TO_REGION_CODE)


def _split_calling_code(digits: str) -> tuple[str, str] | None:
    """phonenumbers' ``_extract_country_code``: the 1-3 digit calling code and the rest, or None."""
    if digits[0] == "0":
        return None
    for size in (1, 2, 3):
        if digits[:size] in _CALLING_CODES:
            return digits[:size], digits[size:]
    return None


def _normalize_phone(value: object, country: str | None) -> str | Dropped:
    """
    PHONE: digits only, with the calling code, without "+" or leading zeros. A national number gets the
    calling code of ``country``; an international "00" prefix and a trunk "(0)" after the calling code
    go. Numbers phonenumbers does not consider possible (too short, too long) and all-zero numbers are
    dropped; valid-looking but unassigned ranges are kept (Meta's own example 555 numbers).
    """
    text = _clean(value)
    if not text:
        return _missing_or(text, _PHONE_INVALID)
    if _is_sha256_hex(text):  # before any digit is stripped
        return text.lower()
    simple = _phone_digits(text)
    if simple is not None:
        result = _phone_fast(*simple, country)
        if result is not None:
            return result
    return _phone_reference(text, country)


def _phone_digits(text: str) -> tuple[str, bool] | None:
    """
    For a number written with digits and separators only: its digits, and whether they start with the
    calling code (after "+" or an international "00"). None for any other writing.
    """
    has_plus = text[0] == "+"
    digits = (text[1:] if has_plus else text).translate(_PHONE_SEPARATORS)
    if not (digits.isascii() and digits.isdigit()):
        return None
    if not has_plus and text.startswith("00") and "1" <= digits[2:3] <= "9":
        return digits[2:], True
    return digits, has_plus


def _phone_fast(digits: str, has_plus: bool, region: str | None) -> str | Dropped | None:
    """
    ``_phone_reference`` for digits-only input, without calling phonenumbers; None when unsure.

    :param digits: the number's digits, after the "+" or international "00" if ``has_plus``.
    :param has_plus: whether the number was written with its calling code.
    :param region: the row's country, upper-case ISO alpha-2, or None.
    """
    if not 4 <= len(digits) <= 20:
        return None
    if has_plus:
        split = _split_calling_code(digits)
        if split is None:
            return None
        calling_code, national = split
        plan = _PHONE_CALLING_CODES[calling_code]
    else:
        if region is None:
            return _PHONE_NO_COUNTRY_CODE
        region_plan = _PHONE_REGIONS[region]
        if region_plan is None or region_plan.transforms_prefix:
            return None
        if region_plan.international_prefix is not None and region_plan.international_prefix.match(digits):
            return None
        calling_code, national, plan = region_plan.calling_code, digits, region_plan
        if digits.startswith(calling_code):
            # Written with the calling code but without "+": phonenumbers takes the code off when the
            # number only makes sense without it.
            potential = region_plan.strip_national_prefix(digits[len(calling_code) :])
            if (not region_plan.matches(digits) and region_plan.matches(potential)) or (
                region_plan.length_result(digits) == ValidationResult.TOO_LONG
            ):
                national, plan = potential, _PHONE_CALLING_CODES[calling_code]
    main_plan = _PHONE_CALLING_CODES[calling_code]
    if plan is None or main_plan is None or plan.transforms_prefix:
        return None
    if len(national) < _MIN_NATIONAL_LENGTH:
        return _PHONE_INVALID
    potential = plan.strip_national_prefix(national)  # the trunk "0" of "+44 (0)20 ..." or "020 ..."
    if plan.length_result(potential) not in _KEEPS_NATIONAL_PREFIX:
        national = potential
    if len(national) > _MAX_NATIONAL_LENGTH:
        return _PHONE_INVALID
    if main_plan.length_result(national) != ValidationResult.IS_POSSIBLE:
        return _PHONE_INVALID
    if not national.strip("0"):
        return _PHONE_INVALID
    return calling_code + national


_KEEPS_NATIONAL_PREFIX = (
    ValidationResult.TOO_SHORT,
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
    ValidationResult.INVALID_LENGTH,
)
_INTERNATIONAL_00 = re.compile(r"00[\s\-.()/]*[1-9]")


def _phone_reference(text: str, region: str | None) -> str | Dropped:
    """
    PHONE by ``phonenumbers``: the rules of :func:`_normalize_phone`, for any writing of a number
    (letters of vanity numbers, extensions, other scripts' digits).

    :param text: the trimmed value.
    :param region: the row's country, upper-case ISO alpha-2, or None.
    """
    if _INTERNATIONAL_00.match(text):
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException as error:
        if error.error_type == NumberParseException.INVALID_COUNTRY_CODE and not text.startswith("+"):
            return _PHONE_NO_COUNTRY_CODE
        return _PHONE_INVALID
    if phonenumbers.is_possible_number_with_reason(number) != ValidationResult.IS_POSSIBLE:
        return _PHONE_INVALID
    national = phonenumbers.national_significant_number(number)
    if not national.strip("0"):
        return _PHONE_INVALID
    return f"{number.country_code}{national}"


# ---------------------------------------------------------------------------------------------------
# Reasons (one shared instance each, so the hot path allocates nothing for a dropped value)
# ---------------------------------------------------------------------------------------------------

_EXTERN_ID_INVALID = Dropped("extern_id.invalid")
_EMAIL_INVALID = Dropped("email.invalid")
_PHONE_INVALID = Dropped("phone.invalid")
_PHONE_NO_COUNTRY_CODE = Dropped("phone.no_country_code")
_GEN_UNKNOWN = Dropped("gen.unknown")
_DOBY_INVALID = Dropped("doby.invalid")
_DOBY_OUT_OF_RANGE = Dropped("doby.out_of_range")
_DOBM_INVALID = Dropped("dobm.invalid")
_DOBM_OUT_OF_RANGE = Dropped("dobm.out_of_range")
_DOBD_INVALID = Dropped("dobd.invalid")
_DOBD_OUT_OF_RANGE = Dropped("dobd.out_of_range")
_LN_INVALID = Dropped("ln.invalid")
_FN_INVALID = Dropped("fn.invalid")
_FI_INVALID = Dropped("fi.invalid")
_CT_INVALID = Dropped("ct.invalid")
_ST_UNKNOWN = Dropped("st.unknown")
_ZIP_INVALID = Dropped("zip.invalid")
_COUNTRY_UNKNOWN = Dropped("country.unknown")
_MADID_INVALID = Dropped("madid.invalid")
_APPUID_INVALID = Dropped("appuid.invalid")
_PAGEUID_INVALID = Dropped("pageuid.invalid")
_LOOKALIKE_VALUE_INVALID = Dropped("lookalike_value.invalid")
_LOOKALIKE_VALUE_NEGATIVE = Dropped("lookalike_value.negative")
_DOB_INVALID = Dropped("dob.invalid")

#: Every reason a value can be dropped for: the keys of :attr:`PreparedBatch.dropped`.
DROP_REASONS: tuple[str, ...] = tuple(
    dropped.reason
    for dropped in (
        _EXTERN_ID_INVALID,
        _EMAIL_INVALID,
        _PHONE_INVALID,
        _PHONE_NO_COUNTRY_CODE,
        _GEN_UNKNOWN,
        _DOBY_INVALID,
        _DOBY_OUT_OF_RANGE,
        _DOBM_INVALID,
        _DOBM_OUT_OF_RANGE,
        _DOBD_INVALID,
        _DOBD_OUT_OF_RANGE,
        _DOB_INVALID,
        _LN_INVALID,
        _FN_INVALID,
        _FI_INVALID,
        _CT_INVALID,
        _ST_UNKNOWN,
        _ZIP_INVALID,
        _COUNTRY_UNKNOWN,
        _MADID_INVALID,
        _APPUID_INVALID,
        _PAGEUID_INVALID,
        _LOOKALIKE_VALUE_INVALID,
        _LOOKALIKE_VALUE_NEGATIVE,
    )
)
#: Why a whole row is rejected: the keys of :attr:`PreparedBatch.rejected_by_reason`.
ROW_NO_IDENTIFIER = "row.no_identifier"
ROW_NO_VALUE = "row.no_value"


# ---------------------------------------------------------------------------------------------------
# THE table of match keys
# ---------------------------------------------------------------------------------------------------


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
    :param identifier: whether a surviving value keeps its row (all keys but EXTERN_ID and
        LOOKALIKE_VALUE).
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


MATCH_KEYS: tuple[MatchKey, ...] = (
    MatchKey(
        "EXTERN_ID",
        ("external_id",),
        hashed=False,
        strong=True,
        rule="Trimmed, otherwise exactly as given (case kept); never hashed.",
        normalizer=_normalize_extern_id,
        identifier=False,
    ),
    MatchKey(
        "EMAIL",
        ("email",),
        hashed=True,
        strong=True,
        rule="Trimmed, lowercase; a value that is not an e-mail address is dropped.",
        normalizer=_normalize_email,
    ),
    MatchKey(
        "PHONE",
        ("phone",),
        hashed=True,
        strong=True,
        rule=(
            "Digits only with the calling code, no `+`, no leading zeros; a national number gets the "
            "row's (or default) country's calling code, and is dropped without one; `00` prefix and trunk "
            "`(0)` removed; impossible numbers (too short, too long, all zeros) dropped."
        ),
        normalizer=_normalize_phone,
        uses_country=True,
    ),
    MatchKey(
        "GEN",
        ("gender",),
        hashed=True,
        strong=False,
        rule="`m` or `f` from m/male/man/boy and f/female/woman/girl; anything else dropped, never guessed.",
        normalizer=_normalize_gender,
        repetitive=True,
    ),
    MatchKey(
        "DOBY",
        ("birth_year",),
        hashed=True,
        strong=False,
        rule="Four digits, 1900 to the current year.",
        normalizer=_normalize_birth_year,
        repetitive=True,
    ),
    MatchKey(
        "DOBM",
        ("birth_month",),
        hashed=True,
        strong=False,
        rule="`01`-`12`, from numbers, English month names and three-letter abbreviations.",
        normalizer=_normalize_birth_month,
        repetitive=True,
    ),
    MatchKey(
        "DOBD",
        ("birth_day",),
        hashed=True,
        strong=False,
        rule="`01`-`31`, zero-padded.",
        normalizer=_normalize_birth_day,
        repetitive=True,
    ),
    MatchKey(
        "LN",
        ("last_name",),
        hashed=True,
        strong=False,
        rule="Lowercase, punctuation, spaces and digits removed; letters of any script kept (UTF-8).",
        normalizer=_normalize_name(_LN_INVALID),
        repetitive=True,
    ),
    MatchKey(
        "FN",
        ("first_name",),
        hashed=True,
        strong=False,
        rule="Lowercase, punctuation, spaces and digits removed; letters of any script kept (UTF-8).",
        normalizer=_normalize_name(_FN_INVALID),
        repetitive=True,
    ),
    MatchKey(
        "FI",
        ("first_initial",),
        hashed=True,
        strong=False,
        rule="The first letter of the value normalized as a first name.",
        normalizer=_normalize_first_initial,
        repetitive=True,
    ),
    MatchKey(
        "CT",
        ("city",),
        hashed=True,
        strong=False,
        rule="Lowercase letters only (any script): no spaces, punctuation or digits.",
        normalizer=_normalize_city,
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
        normalizer=_normalize_state,
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
        normalizer=_normalize_zip,
        uses_country=True,
        repetitive=True,
    ),
    MatchKey(
        "COUNTRY",
        ("country",),
        hashed=True,
        strong=False,
        rule="ISO 3166-1 alpha-2, lowercase, from alpha-2/alpha-3 codes or English names; unknown dropped.",
        normalizer=_normalize_country,
        repetitive=True,
    ),
    MatchKey(
        "MADID",
        ("mobile_advertiser_id",),
        hashed=False,
        strong=True,
        rule="Lowercase UUID with hyphens; never hashed; the all-zero (tracking limited) id is dropped.",
        normalizer=_normalize_madid,
    ),
    MatchKey(
        "APPUID",
        ("app_user_id",),
        hashed=False,
        strong=True,
        rule="As given (trimmed); never hashed. Needs the payload's `app_ids`.",
        normalizer=_normalize_opaque_id(_APPUID_INVALID),
    ),
    MatchKey(
        "PAGEUID",
        ("page_user_id",),
        hashed=False,
        strong=True,
        rule="As given (trimmed); never hashed. Needs the payload's `page_ids`.",
        normalizer=_normalize_opaque_id(_PAGEUID_INVALID),
    ),
    MatchKey(
        "LOOKALIKE_VALUE",
        ("value",),
        hashed=False,
        strong=False,
        rule="A non-negative number (value-based audiences); a row without one is rejected.",
        normalizer=_normalize_lookalike_value,
        identifier=False,
    ),
)

#: The pseudo-key for a whole date of birth: a date (or "YYYY-MM-DD") that fills DOBY, DOBM and DOBD.
DATE_OF_BIRTH = "date_of_birth"
_DATE_OF_BIRTH_ALIASES = ("date_of_birth", "dob")
_DATE_OF_BIRTH_KEYS = ("DOBY", "DOBM", "DOBD")

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


def _region(country: str | None) -> str | None:
    """The upper-case ISO alpha-2 code of a country given in any spelling, or None."""
    if country is None:
        return None
    text = _clean(country)
    return _country_code(text) if text else None


def normalize_with_reason(key: str, value: object, *, country: str | None = None) -> tuple[str, str | None]:
    """
    The normalized value and, when it was dropped, why.

    :param key: Meta's key name or an alias.
    :param value: the value as a database driver returns it.
    :param country: the row's country (ISO alpha-2 in any case, or any spelling COUNTRY accepts).
    :return: ``(normalized, None)``, ``("", None)`` for a missing value, or ``("", reason)``.
    """
    result = match_key(key).normalizer(value, _region(country))
    if result.__class__ is Dropped:
        return "", result.reason
    return result, None


def normalize(key: str, value: object, *, country: str | None = None) -> str:
    """
    The value normalized by Meta's rules for ``key``: "" when missing or not a usable identifier.

    A hashed key's value that already is a SHA-256 hex digest comes back lowercased.

    :param key: Meta's key name or an alias.
    :param value: the value as a database driver returns it (str, int, float, Decimal, date, bytes, None).
    :param country: the row's country; drives PHONE, ZIP and ST.
    """
    return normalize_with_reason(key, value, country=country)[0]


def prepare(key: str, value: object, *, country: str | None = None) -> str:
    """
    Exactly what goes on the wire for ``key``: the SHA-256 hex of the normalized value for hashed keys
    (a value already hashed passes through lowercased), the normalized value for the others, "" when
    missing or unusable.

    :param key: Meta's key name or an alias.
    :param value: the value as a database driver returns it.
    :param country: the row's country; drives PHONE, ZIP and ST.
    """
    spec = match_key(key)
    normalized = normalize(spec.name, value, country=country)
    return _to_wire(normalized) if spec.hashed else normalized


def _to_wire(normalized: str) -> str:
    """The wire form of a hashed key's normalized value ("" stays "", a digest passes through)."""
    if not normalized or _is_sha256_hex(normalized):
        return normalized
    return _sha256_hex(normalized)


# ---------------------------------------------------------------------------------------------------
# Batches: the operator's hot path
# ---------------------------------------------------------------------------------------------------

# Values of the repetitive keys (names, places, dates) are prepared once per batch preparer and then
# looked up; the caches are emptied when they reach this size, so memory stays bounded on any data.
_CACHE_LIMIT = 1 << 14
_MISSING = object()


def _wire_preparer(spec: MatchKey) -> Normalizer:
    """``(value, region) -> wire value | Dropped`` for one key: normalized, hashed if the key is hashed."""
    normalizer = spec.normalizer
    if not spec.hashed:
        return normalizer

    def prepare_cell(value: object, region: str | None) -> str | Dropped:
        normalized = normalizer(value, region)
        if normalized.__class__ is Dropped or not normalized:
            return normalized
        if len(normalized) == 64 and not normalized.strip(_HEX_DIGITS):
            return normalized  # already a digest (lowercased by the normalizer)
        return hashlib.sha256(normalized.encode()).hexdigest()

    return prepare_cell


def _cached_by_region(prepare_cell: Normalizer) -> Normalizer:
    """``prepare_cell`` behind one bounded cache per region (for PHONE-like keys that depend on it)."""
    by_region: dict[str | None, Callable[[object], str | Dropped]] = {}

    def cached(value: object, region: str | None) -> str | Dropped:
        memoized = by_region.get(region)
        if memoized is None:
            memoized = by_region[region] = _memoize(lambda value: prepare_cell(value, region))
        return memoized(value)

    return cached


def _memoize(compute: Callable[[object], object]) -> Callable[[object], object]:
    """``compute`` behind a dict of at most ``_CACHE_LIMIT`` values (emptied when full)."""
    cache: dict[object, object] = {}

    def cached(value: object) -> object:
        try:
            result = cache.get(value, _MISSING)
        except TypeError:  # an unhashable value (e.g. an array column): computed, not cached
            return compute(value)
        if result is _MISSING:
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            result = cache[value] = compute(value)
        return result

    return cached


def _country_cell() -> Callable[[object], tuple[str | Dropped, str | None]]:
    """COUNTRY's cell preparer, which also returns the row's region (upper-case alpha-2) for PHONE, ZIP, ST."""

    def country_cell(value: object) -> tuple[str | Dropped, str | None]:
        normalized = _normalize_country(value, None)
        if normalized.__class__ is Dropped or not normalized:
            return normalized, None
        if _is_sha256_hex(normalized):  # a hashed country cannot tell PHONE which calling code to use
            return normalized, None
        return _sha256_hex(normalized), normalized.upper()

    return _memoize(country_cell)


_ISO_DATE = re.compile(r"([0-9]{4})(?:([-/.])([0-9]{1,2})\2([0-9]{1,2})|([0-9]{2})([0-9]{2}))(?:[T ].*)?")
_NO_DATE_OF_BIRTH = ("", "", "")


def _date_of_birth_parts(value: object) -> tuple[object, object, object] | Dropped:
    """(year, month, day) of a date, a datetime or a year-first text date; ("", "", "") when missing."""
    if isinstance(value, datetime):
        value = value.date()
    if isinstance(value, date):
        return value.year, value.month, value.day
    text = _clean(value)
    if not text:
        return _NO_DATE_OF_BIRTH if text is not None else _DOB_INVALID
    parsed = _ISO_DATE.fullmatch(text)
    if parsed is None:  # "02/03/1990" is not guessed: day-first and month-first both exist
        return _DOB_INVALID
    year, _, month, day, month_2, day_2 = parsed.groups()
    try:
        born = date(int(year), int(month or month_2), int(day or day_2))
    except ValueError:
        return _DOB_INVALID
    return born.year, born.month, born.day


def _date_of_birth_cell() -> Callable[[object], tuple[str | Dropped, ...]]:
    """The date_of_birth pseudo-key's cell preparer: wire values for DOBY, DOBM and DOBD."""
    parts_preparers = tuple(_wire_preparer(match_key(name)) for name in _DATE_OF_BIRTH_KEYS)

    def date_of_birth_cell(value: object) -> tuple[str | Dropped, ...]:
        parts = _date_of_birth_parts(value)
        if parts.__class__ is Dropped:
            return parts, "", ""
        return tuple(prepare(part, None) for prepare, part in zip(parts_preparers, parts, strict=True))

    return _memoize(date_of_birth_cell)


@dataclass
class PreparedBatch:
    """
    What :meth:`RowPreparer.prepare_rows` made of a batch of rows.

    :param rows: wire rows (in the preparer's ``schema`` order) of the kept input rows; "" where missing.
    :param kept: for each wire row, the index of its input row.
    :param rejected: indices of the input rows rejected.
    :param dropped: reason -> count of dropped values (``"email.invalid"``, ``"gen.unknown"``, ...).
    :param rejected_by_reason: reason -> count of rejected rows (``"row.no_identifier"``, ``"row.no_value"``).
    """

    rows: list[tuple[str, ...]] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)
    rejected_by_reason: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass(frozen=True)
class _Column:
    """
    One input column: its cell preparer and the wire keys it fills.

    :param takes_region: whether the preparer is called ``(value, region)`` rather than ``(value)``.
    """

    wire_keys: tuple[str, ...]
    preparer: Callable
    takes_region: bool = False
    is_country: bool = False
    is_identifier: bool = True


class RowPreparer:
    """
    Prepares whole rows for the wire; compiled once per mapping, it is the operator's hot path.

    The row's COUNTRY (when mapped and usable) drives PHONE, ZIP and ST, otherwise ``default_country``.
    A row is rejected when no identifier but EXTERN_ID survived (``row.no_identifier``; with only
    EXTERN_ID mapped, when that is missing), or when LOOKALIKE_VALUE is mapped and unusable
    (``row.no_value``). Bad values are dropped and counted, never raised.

    :param keys: Meta key names or aliases, in the order of the input rows' columns; ``date_of_birth``
        (alias ``dob``) takes a date and fills DOBY, DOBM and DOBD.
    :param default_country: the country of rows without a usable COUNTRY (ISO code or English name).
    :raises ValueError: for an unknown key, a key mapped twice, or an unknown default country.
    """

    def __init__(self, keys: Sequence[str], *, default_country: str | None = None) -> None:
        self._columns = tuple(_column(key) for key in keys)
        self.schema: tuple[str, ...] = tuple(name for column in self._columns for name in column.wire_keys)
        if not self.schema:
            raise ValueError("RowPreparer needs at least one match key.")
        duplicates = sorted({name for name in self.schema if self.schema.count(name) > 1})
        if duplicates:
            raise ValueError(f"Match keys mapped more than once: {', '.join(duplicates)}.")
        self._default_region = _region(default_country) if default_country is not None else None
        if default_country is not None and self._default_region is None:
            raise ValueError(f"Unknown default_country {default_country!r}: use an ISO 3166-1 code.")
        self._run = _compile_row_loop(self._columns)

    @property
    def default_country(self) -> str | None:
        """The default country as lowercase ISO alpha-2 (how COUNTRY is sent), or None."""
        return self._default_region.lower() if self._default_region else None

    def column_of(self, key_name: str) -> int:
        """
        The index of the input column that fills Meta key ``key_name`` (``date_of_birth`` fills three).

        :param key_name: a Meta key name as in :attr:`schema`, e.g. ``"EXTERN_ID"``.
        :raises ValueError: when no column fills that key.
        """
        for index, column in enumerate(self._columns):
            if key_name in column.wire_keys:
                return index
        raise ValueError(f"No column is mapped to {key_name}.")

    def prepare_rows(self, rows: Iterable[Sequence[object]]) -> PreparedBatch:
        """
        Wire rows for ``rows``, with the counts of values dropped and rows rejected.

        :param rows: sequences with one value per key given to the constructor, in that order.
        """
        batch = PreparedBatch()
        drops: list[str] = []
        rejections: list[str] = []
        self._run(rows, self._default_region, batch.rows, batch.kept, batch.rejected, drops, rejections)
        batch.dropped.update(drops)
        batch.rejected_by_reason.update(rejections)
        return batch


def _column(key: str) -> _Column:
    if str(key).strip().lower() in _DATE_OF_BIRTH_ALIASES:
        return _Column(_DATE_OF_BIRTH_KEYS, _date_of_birth_cell())
    spec = match_key(key)
    if spec.name == "COUNTRY":
        return _Column((spec.name,), _country_cell(), is_country=True)
    prepare_cell = _wire_preparer(spec)
    if not spec.repetitive:
        return _Column((spec.name,), prepare_cell, takes_region=True, is_identifier=spec.identifier)
    if spec.uses_country:
        return _Column((spec.name,), _cached_by_region(prepare_cell), takes_region=True)
    return _Column((spec.name,), _memoize(lambda value: prepare_cell(value, None)))


def _compile_row_loop(columns: Sequence[_Column]) -> Callable[..., None]:
    """
    The per-row loop for these columns, generated as Python source and compiled once.

    Specializing the loop to the mapping (no inner loop over columns, no per-value dispatch) is what
    makes preparation faster than the SDK's plain hashing loop; ``collections.namedtuple`` and
    ``dataclasses`` generate code the same way.
    """
    namespace: dict[str, object] = {"Dropped": Dropped}
    body: list[str] = []
    outputs: dict[str, str] = {}  # wire key -> variable
    identifiers: list[str] = []
    for position, column in sorted(enumerate(columns), key=lambda item: not item[1].is_country):
        namespace[f"cell_{position}"] = column.preparer
        names = [f"v{position}_{index}" for index in range(len(column.wire_keys))]
        if column.is_country:
            body.append(f"{names[0]}, region = cell_{position}(row[{position}])")
            body.append("if region is None: region = default_region")
        else:
            arguments = f"row[{position}], region" if column.takes_region else f"row[{position}]"
            body.append(f"{', '.join(names)} = cell_{position}({arguments})")
        for name in names:
            body += [f"if {name}.__class__ is Dropped:", f"    drop({name}.reason)", f"    {name} = ''"]
        outputs.update(zip(column.wire_keys, names, strict=True))
        if column.is_identifier:
            identifiers += names
    if not identifiers:  # only EXTERN_ID (and LOOKALIKE_VALUE) mapped: a valid removal schema
        identifiers = [outputs[key] for key in outputs if key == "EXTERN_ID"]
    if "COUNTRY" not in outputs:
        body.insert(0, "region = default_region")
    body += [
        f"if not ({' or '.join(identifiers) or 'False'}):",
        "    rejected_append(index)",
        f"    reject({ROW_NO_IDENTIFIER!r})",
        "    continue",
    ]
    if "LOOKALIKE_VALUE" in outputs:
        body += [
            f"if not {outputs['LOOKALIKE_VALUE']}:",
            "    rejected_append(index)",
            f"    reject({ROW_NO_VALUE!r})",
            "    continue",
        ]
    wire_row = ", ".join(outputs[key] for column in columns for key in column.wire_keys)
    body += [f"wire_append(({wire_row},))", "kept_append(index)"]
    source = "\n".join(
        [
            "def run(rows, default_region, wire_rows, kept, rejected, drops, rejections):",
            "    wire_append, kept_append = wire_rows.append, kept.append",
            "    rejected_append, drop, reject = rejected.append, drops.append, rejections.append",
            "    for index, row in enumerate(rows):",
            *(f"        {line}" for line in body),
        ]
    )
    exec(compile(source, "<airflow_provider_fbca.identifiers.RowPreparer>", "exec"), namespace)
    return namespace["run"]  # type: ignore[return-value]


def prepare_rows(
    keys: Sequence[str], rows: Iterable[Sequence[object]], default_country: str | None = None
) -> PreparedBatch:
    """
    Convenience wrapper: ``RowPreparer(keys, default_country=...).prepare_rows(rows)``.

    :param keys: Meta key names or aliases, in the order of the rows' columns.
    :param rows: sequences with one value per key.
    :param default_country: the country of rows without a usable COUNTRY.
    """
    return RowPreparer(keys, default_country=default_country).prepare_rows(rows)


# ---------------------------------------------------------------------------------------------------
# README's mapping reference, generated from MATCH_KEYS so that it cannot drift
# ---------------------------------------------------------------------------------------------------

README_START = "<!-- mapping-reference:start -->"
README_END = "<!-- mapping-reference:end -->"

_REFERENCE_INTRO = """\
Map each match key (Meta's name or an alias, any case) to a column. Every value goes through Unicode
NFC and trimming first; a missing value (NULL, empty, NaN) is sent as `""`, never as the hash of an
empty string. Values arrive typed from the database driver: `12345.0` is `12345`, a US ZIP stored as a
number gets its leading zeros back, a `date` fills the date-of-birth keys. A value of a hashed key that
already is a SHA-256 hex digest passes through lowercased and is never hashed twice. Hashed keys are
sent as the lowercase hex SHA-256 of the UTF-8 normalized value.
"""

_REFERENCE_OUTRO = """\
The row's COUNTRY (when mapped and recognized) decides PHONE, ZIP and ST; otherwise the sync's
`default_country`. A value that is not usable is dropped (sent as `""`) and counted by reason
(the sync's report lists them); one bad value never fails a batch. A row is rejected
(`row.no_identifier`) when no key but EXTERN_ID and LOOKALIKE_VALUE survived, and (`row.no_value`) when
LOOKALIKE_VALUE is mapped but unusable. The reasons a value is dropped for: {reasons}.

Regenerate this section with `python -m airflow_provider_fbca.identifiers --update-readme`.

**Where this differs from other tools.** Meta's Python SDK (`CustomAudience.format_params`) hashes
MADID and APPUID and empty cells (`""` becomes `e3b0c442...`), lowercases EXTERN_ID, keeps trunk zeros
and adds no calling code to phones (`+44 (0)7700 900123` becomes `4407700900123`), drops accented letters
(`José` becomes `jos`), keeps `california` instead of `ca`, keeps ZIP spaces and ZIP+4, turns any country
name into its first two letters (`United Kingdom` becomes `un`) and any gender into its first letter.
Segment's destination does not map state names with spaces, does not zero-pad months and days, sends
unknown genders as they are, does not map country names, does not cut US ZIPs to five digits, and fails a
whole batch on one phone that normalizes to nothing. Here each of these follows Meta's documented rule
or is dropped with a reason; phones are parsed with Google's libphonenumber metadata (`phonenumbers`),
so national numbers get the right calling code and impossible numbers are not sent.
"""


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def mapping_reference_markdown() -> str:
    """The README's mapping reference: every match key, its aliases, rule and whether it is hashed."""
    lines = [
        _REFERENCE_INTRO,
        "| Match key | Aliases | Hashed | Identifies a person alone | Normalization |",
        "|---|---|---|---|---|",
    ]
    for key in MATCH_KEYS:
        aliases = ", ".join(f"`{alias}`" for alias in key.aliases)
        lines.append(
            f"| `{key.name}` | {aliases} | {'yes' if key.hashed else 'no'} | "
            f"{'yes' if key.strong else 'no'} | {_markdown_cell(key.rule)} |"
        )
    aliases = ", ".join(f"`{alias}`" for alias in _DATE_OF_BIRTH_ALIASES)
    lines.append(
        f"| {' + '.join(f'`{name}`' for name in _DATE_OF_BIRTH_KEYS)} | {aliases} | yes | no | "
        "One date (a `date`, or text `YYYY-MM-DD`, `YYYY/MM/DD`, `YYYYMMDD`) fills the three keys; "
        "day-first and month-first texts are not guessed. |"
    )
    lines += ["", _REFERENCE_OUTRO.format(reasons=", ".join(f"`{reason}`" for reason in DROP_REASONS))]
    return "\n".join(lines)


def readme_region(readme_text: str) -> str:
    """
    The text between README's mapping-reference markers, without the marker lines.

    :raises ValueError: when the markers are missing.
    """
    start = readme_text.find(README_START)
    end = readme_text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {README_START} ... {README_END} region.")
    return readme_text[start + len(README_START) : end].strip("\n")


def update_readme(path: str) -> bool:
    """
    Rewrite the mapping reference in the README at ``path``; only the marked region changes.

    :return: whether the file changed.
    """
    with open(path, encoding="utf-8") as readme:
        text = readme.read()
    current = readme_region(text)
    wanted = mapping_reference_markdown().strip("\n")
    if current == wanted:
        return False
    start = text.find(README_START) + len(README_START)
    end = text.find(README_END)
    with open(path, "w", encoding="utf-8") as readme:
        readme.write(f"{text[:start]}\n{wanted}\n{text[end:]}")
    return True


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_fbca.identifiers",
        description="Print or regenerate README's mapping reference from the table of match keys.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--markdown", action="store_true", help="print the mapping reference")
    action.add_argument(
        "--update-readme", metavar="PATH", nargs="?", const="README.md", help="rewrite it in README.md"
    )
    arguments = parser.parse_args(argv)
    if arguments.markdown:
        print(mapping_reference_markdown())
    else:
        changed = update_readme(arguments.update_readme)
        print(f"{arguments.update_readme}: {'updated' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
