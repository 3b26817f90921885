"""PHONE: numbering plans compiled for the fast path, and phonenumbers as the reference."""

from __future__ import annotations

import re
from collections.abc import Callable

import phonenumbers
from phonenumbers import PhoneMetadata
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE, NumberParseException, ValidationResult

from airflow_provider_fbca.identifiers.reasons import PHONE_INVALID, PHONE_NO_COUNTRY_CODE, Dropped
from airflow_provider_fbca.identifiers.text import clean, is_sha256_hex, missing_or

# ``phonenumbers`` is the reference (Google's libphonenumber metadata) but parsing one number costs
# 25-50 us, more than the SDK spends on a whole row. ``_phone_fast`` replays the steps of
# ``phonenumbers.parse`` + ``is_possible_number_with_reason`` for the common shape (an optional "+",
# then digits and the separators " -.()/") from the same metadata, precompiled per region; whatever it
# is not sure about goes to ``_phone_reference``. A test checks that both agree on every region's
# example numbers in many writings.

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


def normalize_phone(value: object, country: str | None) -> str | Dropped:
    """
    PHONE: digits only, with the calling code, without "+" or leading zeros. A national number gets the
    calling code of ``country``; an international "00" prefix and a trunk "(0)" after the calling code
    go. Numbers phonenumbers does not consider possible (too short, too long) and all-zero numbers are
    dropped; valid-looking but unassigned ranges are kept (Meta's own example 555 numbers).
    """
    text = clean(value)
    if not text:
        return missing_or(text, PHONE_INVALID)
    if is_sha256_hex(text):  # before any digit is stripped
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
            return PHONE_NO_COUNTRY_CODE
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
        return PHONE_INVALID
    potential = plan.strip_national_prefix(national)  # the trunk "0" of "+44 (0)20 ..." or "020 ..."
    if plan.length_result(potential) not in _KEEPS_NATIONAL_PREFIX:
        national = potential
    if len(national) > _MAX_NATIONAL_LENGTH:
        return PHONE_INVALID
    if main_plan.length_result(national) != ValidationResult.IS_POSSIBLE:
        return PHONE_INVALID
    if not national.strip("0"):
        return PHONE_INVALID
    return calling_code + national


_KEEPS_NATIONAL_PREFIX = (
    ValidationResult.TOO_SHORT,
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
    ValidationResult.INVALID_LENGTH,
)
_INTERNATIONAL_00 = re.compile(r"00[\s\-.()/]*[1-9]")


def _phone_reference(text: str, region: str | None) -> str | Dropped:
    """
    PHONE by ``phonenumbers``: the rules of :func:`normalize_phone`, for any writing of a number
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
            return PHONE_NO_COUNTRY_CODE
        return PHONE_INVALID
    if phonenumbers.is_possible_number_with_reason(number) != ValidationResult.IS_POSSIBLE:
        return PHONE_INVALID
    national = phonenumbers.national_significant_number(number)
    if not national.strip("0"):
        return PHONE_INVALID
    return f"{number.country_code}{national}"
