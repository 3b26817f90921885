"""PHONE: numbering plans compiled for the fast path, and phonenumbers as the reference."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from airflow_provider_fbca.identifiers.reasons import PHONE_INVALID, PHONE_NO_COUNTRY_CODE, Dropped
from airflow_provider_fbca.identifiers.text import clean, is_sha256_hex, missing_or

if TYPE_CHECKING:
    import phonenumbers
    from phonenumbers import PhoneMetadata

# ``phonenumbers`` is imported by the first number normalized, not by this module: its import costs every
# task 25-50 ms of CPU, and most syncs map no PHONE. Nothing on the hot path checks whether it is loaded:
# its data is reached through plans compiled on first use (``_LazyPlans``), and a loader imports it.

# ``phonenumbers`` is the reference (Google's libphonenumber metadata) but parsing one number costs
# 25-50 us, more than the SDK spends on a whole row. ``_phone_fast`` replays the steps of
# ``phonenumbers.parse``, ``is_possible_number_with_reason`` and ``is_valid_number`` for the common
# shape (an optional "+", then digits and the separators " -.()/") from the same metadata, precompiled
# per region; whatever it is not sure about goes to ``_phone_reference``. Tests check that both agree
# on every region's example numbers in many writings.
#
# Which reading of a number wins (Meta: "digits with the country code"; warehouses often store E.164
# without its "+", as text or as a number):
#   1. written with "+" or an international "00": that calling code;
#   2. with a country (the row's or the default): the national number of that country when valid,
#      else the digits read as "+digits" when that is a valid number, else the national reading as
#      before (kept when possible: Meta's own 555 examples are not "valid");
#   3. with no country: "+digits" when valid, else dropped as ``phone.no_country_code``.

# Separators the fast path removes; phonenumbers treats each of them as punctuation. Deleted from the
# ASCII bytes: ``bytes.translate`` deletes in one C pass, ``str.translate`` looks each character up in a
# dict (five times slower, and the most expensive step of a phone number).
_PHONE_SEPARATORS = b" -.()/"
_MIN_NATIONAL_LENGTH = 2  # phonenumbers' _MIN_LENGTH_FOR_NSN
_MAX_NATIONAL_LENGTH = 17  # phonenumbers' _MAX_LENGTH_FOR_NSN
_LONGEST_FAST = 20  # the fast path's longest digits; phonenumbers' own longest national number is 17
_LONGEST_LENGTH_TABULATED = _LONGEST_FAST + 1  # every longer number is as TOO_LONG as this one


def _never_valid(national: str) -> bool:
    return False


class _PhonePlan:
    """The numbering plan of one region (or non-geographic calling code), compiled for the fast path."""

    __slots__ = (
        "calling_code",
        "international_prefix",
        "keeps_national_prefix",
        "leading_digits",
        "length_results",
        "lengths",
        "local_lengths",
        "matches",
        "national_pattern",
        "national_prefix",
        "possible",
        "too_long",
        "transforms_prefix",
        "typed_patterns",
    )

    def __init__(self, metadata: PhoneMetadata) -> None:
        self.calling_code = str(metadata.country_code)
        self.international_prefix = _compile_or_none(metadata.international_prefix)
        self.national_prefix = _compile_or_none(metadata.national_prefix_for_parsing)
        self.transforms_prefix = bool(metadata.national_prefix_transform_rule)
        general = metadata.general_desc
        self.national_pattern = _compile_or_none(general.national_number_pattern)
        # phonenumbers' ``_match_national_number(national, general_desc, False)``, truthy when it matches;
        # the pattern's own method, as the fast path calls it for nearly every number.
        self.matches: Callable[[str], object] = (
            self.national_pattern.fullmatch if self.national_pattern is not None else _never_valid
        )
        self.lengths = tuple(general.possible_length)
        self.local_lengths = frozenset(general.possible_length_local_only)
        self.leading_digits = _compile_or_none(metadata.leading_digits)
        self.typed_patterns = _typed_patterns(metadata)
        # Tabulated: the fast path asks for every number, twice.
        self.length_results = tuple(
            self._length_result(length) for length in range(_LONGEST_LENGTH_TABULATED + 1)
        )
        # phonenumbers keeps a trunk prefix when the number without it would not have a possible length.
        self.keeps_national_prefix = tuple(
            result in _keeps_national_prefix() for result in self.length_results
        )
        results = _validation_result()
        self.possible = tuple(result == results.IS_POSSIBLE for result in self.length_results)
        self.too_long = tuple(result == results.TOO_LONG for result in self.length_results)

    def is_valid(self, national: str) -> bool:
        """phonenumbers' ``_number_type_helper(national, metadata) != UNKNOWN``."""
        if len(national) not in self.lengths or not self.matches(national):
            return False
        typed = self.typed_patterns.get(len(national))
        return typed is not None and typed.fullmatch(national) is not None

    def is_too_long(self, national: str) -> bool:
        """Whether phonenumbers finds ``national`` too long for the plan."""
        return self.too_long[min(len(national), _LONGEST_LENGTH_TABULATED)]

    def _length_result(self, length: int) -> int:
        ValidationResult = _validation_result()
        if length in self.local_lengths:
            return ValidationResult.IS_POSSIBLE_LOCAL_ONLY
        if self.lengths[0] == length:
            return ValidationResult.IS_POSSIBLE
        if self.lengths[0] > length:
            return ValidationResult.TOO_SHORT
        if self.lengths[-1] < length:
            return ValidationResult.TOO_LONG
        return ValidationResult.IS_POSSIBLE if length in self.lengths[1:] else ValidationResult.INVALID_LENGTH

    def strip_national_prefix(self, number: str) -> str | None:
        """
        phonenumbers' ``_maybe_strip_national_prefix_carrier_code``; None when the plan would transform
        the prefix (Argentina's, Brazil's, ... carrier codes), which only phonenumbers replays.
        """
        if not number or self.national_prefix is None:
            return number
        prefix = self.national_prefix.match(number)
        if prefix is None:
            return number
        if self.transforms_prefix and (not prefix.groups() or prefix.groups()[-1] is not None):
            return None  # the transform applies only when the rule's last group took part
        rest = number[prefix.end() :]
        if self.matches(number) and not self.matches(rest):
            return number
        return rest


def _validation_result() -> type:
    """phonenumbers' ``ValidationResult`` (its possible-number verdicts)."""
    from phonenumbers.phonenumberutil import ValidationResult

    return ValidationResult


def _keeps_national_prefix() -> tuple[int, ...]:
    """The verdicts on a number without its trunk prefix that make phonenumbers keep the prefix."""
    results = _validation_result()
    return results.TOO_SHORT, results.IS_POSSIBLE_LOCAL_ONLY, results.INVALID_LENGTH


def _regions_of_calling_codes() -> dict[int, tuple[str, ...]]:
    """phonenumbers' ``COUNTRY_CODE_TO_REGION_CODE``: each calling code's regions, its main one first."""
    from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE

    return COUNTRY_CODE_TO_REGION_CODE


def _compile_or_none(pattern: str | None) -> re.Pattern[str] | None:
    return re.compile(pattern) if pattern else None


def _typed_patterns(metadata: PhoneMetadata) -> dict[int, re.Pattern[str]]:
    """
    Per national length, one pattern matching the numbers of any type (fixed line, mobile, toll free,
    ...): a number of a type is what phonenumbers calls valid. A type with its own lengths only takes
    part at those lengths, as in phonenumbers' ``_is_number_matching_desc``.
    """
    types = [
        metadata.premium_rate,
        metadata.toll_free,
        metadata.shared_cost,
        metadata.voip,
        metadata.personal_number,
        metadata.pager,
        metadata.uan,
        metadata.voicemail,
        metadata.fixed_line,
    ]
    if not metadata.same_mobile_and_fixed_line_pattern:  # otherwise phonenumbers never tests mobile
        types.append(metadata.mobile)
    patterns = {}
    for length in metadata.general_desc.possible_length:
        alternatives = [
            f"(?:{desc.national_number_pattern})"
            for desc in types
            if desc is not None
            and desc.national_number_pattern
            and (not desc.possible_length or length in desc.possible_length)
        ]
        if alternatives:
            patterns[length] = re.compile("|".join(alternatives))
    return patterns


class _LazyPlans(dict):
    """Plans (and validators, calling-code sizes) compiled on first use: compiling all 245 regions up front would cost every DAG parse."""

    def __init__(self, load: Callable[[str], object]) -> None:
        super().__init__()
        self._load = load

    def __missing__(self, key: str) -> object:
        plan = self[key] = self._load(key)
        return plan


def _load_region_plan(region: str) -> _PhonePlan | None:
    from phonenumbers import PhoneMetadata

    metadata = PhoneMetadata.metadata_for_region(region, None)
    return _PhonePlan(metadata) if metadata is not None else None


def _load_calling_code_plan(calling_code: str) -> _PhonePlan | None:
    """The plan phonenumbers checks a calling code's numbers against: its main region's."""
    from phonenumbers import PhoneMetadata

    code = int(calling_code)
    main_region = _regions_of_calling_codes()[code][0]
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, main_region)
    return _PhonePlan(metadata) if metadata is not None else None


_PHONE_REGIONS = _LazyPlans(_load_region_plan)
_PHONE_CALLING_CODES = _LazyPlans(_load_calling_code_plan)


def _is_valid(calling_code: str, national: str) -> bool:
    """phonenumbers' ``is_valid_number`` for ``+<calling_code><national>``."""
    return _VALIDATORS[calling_code](national)


def _load_validator(calling_code: str) -> Callable[[str], bool]:
    """
    ``is_valid_number`` for one calling code: valid in the region the number belongs to. Of a code's
    regions (in phonenumbers' order), a region with leading digits claims the numbers starting with
    them, and a region without claims the numbers valid in it; the first claim decides.
    """
    regions = _regions_of_calling_codes()[int(calling_code)]
    if len(regions) == 1:
        plan = _PHONE_CALLING_CODES[calling_code]
        return plan.is_valid if plan is not None else _never_valid
    plans = [plan for plan in (_PHONE_REGIONS[region] for region in regions) if plan is not None]
    first_claimant = _first_claimant([plan for plan in plans if plan.leading_digits is not None])

    def is_valid(national: str) -> bool:
        claimant = first_claimant(national)
        for plan in plans:
            if plan is claimant:
                return plan.is_valid(national)
            if plan.leading_digits is None and plan.is_valid(national):
                return True
        return False

    return is_valid


def _first_claimant(plans: list[_PhonePlan]) -> Callable[[str], _PhonePlan | None]:
    """
    The first of ``plans`` whose leading digits start a number, in one regex call: +1 has 23 such
    regions, and a number none of them claims (most of the US) would try each in turn. An alternation
    takes its first alternative that matches, so the outermost group that took part names the plan.
    """
    if not plans:
        return lambda national: None
    alternatives, plan_of_group, group = [], {}, 1
    for plan in plans:
        alternatives.append(f"({plan.leading_digits.pattern})")
        plan_of_group[group] = plan
        group += 1 + plan.leading_digits.groups  # the plan's own groups are numbered inside its group
    claims = re.compile("|".join(alternatives))

    def first_claimant(national: str) -> _PhonePlan | None:
        match = claims.match(national)
        return None if match is None else plan_of_group[match.lastindex]

    return first_claimant


_VALIDATORS = _LazyPlans(_load_validator)


def _load_validity_filter(calling_code: str) -> Callable[[str], object]:
    """
    A cheap necessary condition (truthy when met) for ``+<calling_code><rest>`` to be valid. When the
    calling code's national prefix does not start ``rest``, the national number is ``rest`` itself:
    valid in one of the code's regions, it has that region's length and matches its general pattern.
    For a code shared by regions (+7, +44, ...) only the lengths are checked: trying every region's
    pattern costs what the full check does.
    """
    plan = _PHONE_CALLING_CODES[calling_code]
    if plan is None:
        return _maybe
    regions = _regions_of_calling_codes()[int(calling_code)]
    prefix = plan.national_prefix
    if len(regions) > 1:
        lengths = frozenset(length for region in regions for length in _region_lengths(region))
        matches = _maybe
    else:
        lengths, matches = frozenset(plan.lengths), plan.matches

    def may_be_valid(rest: str) -> object:
        if prefix is not None and prefix.match(rest) is not None:
            return True
        return len(rest) in lengths and matches(rest)

    return may_be_valid


def _region_lengths(region: str) -> tuple[int, ...]:
    plan = _PHONE_REGIONS[region]
    return plan.lengths if plan is not None else ()


def _maybe(rest: str) -> bool:
    return True


_MAY_BE_VALID = _LazyPlans(_load_validity_filter)


def _calling_code_size(start: str) -> int | None:
    """
    The length of the calling code three digits start with (the shortest), None when none: phonenumbers'
    ``_extract_country_code`` for digits of three or more, as one dict lookup once looked up.
    """
    codes = _regions_of_calling_codes()
    for size in (1, 2, 3):
        if start[0] != "0" and int(start[:size]) in codes:  # a calling code never starts with 0
            return size
    return None


#: Per three-digit start, the length of the calling code it starts with (or None).
_CALLING_CODE_SIZES = _LazyPlans(_calling_code_size)


def normalize_phone(value: object, country: str | None) -> str | Dropped:
    """
    PHONE: digits only, with the calling code, without "+" or leading zeros. A national number gets the
    calling code of ``country``; an international "00" prefix and a trunk "(0)" after the calling code
    go. Numbers phonenumbers does not consider possible (too short, too long) and all-zero numbers are
    dropped; valid-looking but unassigned ranges are kept (Meta's own example 555 numbers).
    """
    # clean(value), without a call for the usual ASCII text: e-mails and phones are rarely cached
    text = value.strip() if value.__class__ is str and value.isascii() else clean(value)
    if not text:
        return missing_or(text, PHONE_INVALID)
    if len(text) == 64 and is_sha256_hex(text):  # before any digit is stripped; the length first: no call
        return text.lower()
    simple = _phone_digits(text)
    if simple is not None:
        result = _phone_fast(simple[0], simple[1], country)
        if result is not None:
            return result
    return _phone_reference(text, country)


def _phone_digits(text: str) -> tuple[str, bool] | None:
    """
    For a number written with digits and separators only: its digits, and whether they start with the
    calling code (after "+" or an international "00"). None for any other writing.
    """
    has_plus = text[0] == "+"
    number = text[1:] if has_plus else text
    if not number.isascii():
        return None
    ascii_digits = number.encode().translate(None, _PHONE_SEPARATORS)
    if not ascii_digits.isdigit():
        return None
    digits = ascii_digits.decode()
    if not has_plus and text.startswith("00") and "1" <= digits[2:3] <= "9":
        return digits[2:], True
    return digits, has_plus


def _phone_fast(digits: str, has_plus: bool, region: str | None) -> str | Dropped | None:
    """
    ``_phone_reference`` for digits-only input, without calling phonenumbers; None when unsure.

    Called for nearly every phone of a batch: readings stay tuples and helpers few (a Python call
    costs about what a regex match does).

    :param digits: the number's digits, after the "+" or international "00" if ``has_plus``.
    :param has_plus: whether the number was written with its calling code.
    :param region: the row's country, upper-case ISO alpha-2, or None.
    """
    if not 4 <= len(digits) <= _LONGEST_FAST:
        return None
    code_size = _CALLING_CODE_SIZES[digits[:3]]  # "+digits" read as calling code + national number
    if has_plus:
        if code_size is None:
            return None
        reading = _fast_possible(digits[:code_size], digits[code_size:], None)
        return reading[0] + reading[1] if reading.__class__ is tuple else reading
    national = _fast_national(digits, region) if region is not None else PHONE_NO_COUNTRY_CODE
    if national is None:
        return None
    # Without a calling code, or when cheap checks rule out validity, "+digits" is no valid number.
    if code_size is not None and _MAY_BE_VALID[digits[:code_size]](digits[code_size:]):
        international = _fast_possible(digits[:code_size], digits[code_size:], None)
        if international is None:
            return None
        # The national reading wins when valid; the "+digits" one only matters when it is valid.
        if _only_international_valid(international, national):
            return international[0] + international[1]
    return national[0] + national[1] if national.__class__ is tuple else national


def _only_international_valid(
    international: tuple[str, str] | Dropped, national: tuple[str, str] | Dropped
) -> bool:
    """Whether the "+digits" reading is a valid number, different from and beating the national one."""
    if international == national or international.__class__ is not tuple or not _is_valid(*international):
        return False
    return national.__class__ is not tuple or not _is_valid(*national)


def _fast_national(digits: str, region: str) -> tuple[str, str] | Dropped | None:
    """``digits`` dialled in ``region`` as (calling code, national number), or why not; None when unsure."""
    region_plan = _PHONE_REGIONS[region]
    if region_plan is None:
        return None
    if region_plan.international_prefix is not None and region_plan.international_prefix.match(digits):
        return None
    calling_code, national, plan = region_plan.calling_code, digits, region_plan
    if digits.startswith(calling_code):
        # Written with the calling code but without "+": phonenumbers takes the code off when the
        # number only makes sense without it.
        potential = region_plan.strip_national_prefix(digits[len(calling_code) :])
        if potential is None:
            return None
        if (not region_plan.matches(digits) and region_plan.matches(potential)) or (
            region_plan.is_too_long(digits)
        ):
            national, plan = potential, None
    return _fast_possible(calling_code, national, plan)


def _fast_possible(
    calling_code: str, national: str, plan: _PhonePlan | None
) -> tuple[str, str] | Dropped | None:
    """
    The trunk prefix taken off ``national``, then phonenumbers' possible-number checks.

    :param plan: the plan whose trunk prefix ``national`` may carry; None: the calling code's own.
    """
    main_plan = _PHONE_CALLING_CODES[calling_code]
    if plan is None:
        plan = main_plan
    if plan is None or main_plan is None:
        return None
    if len(national) < _MIN_NATIONAL_LENGTH:
        return PHONE_INVALID
    potential = national
    if plan.national_prefix is not None and plan.national_prefix.match(national) is not None:
        potential = plan.strip_national_prefix(national)  # the trunk "0" of "+44 (0)20 ..." or "020 ..."
        if potential is None:
            return None
    if not plan.keeps_national_prefix[len(potential)]:
        national = potential
    if not main_plan.possible[len(national)]:  # also past _MAX_NATIONAL_LENGTH
        return PHONE_INVALID
    if not national.strip("0"):
        return PHONE_INVALID
    return calling_code, national


_INTERNATIONAL_00 = re.compile(r"00[\s\-.()/]*[1-9]")


def _phone_reference(text: str, region: str | None) -> str | Dropped:
    """
    PHONE by ``phonenumbers``: the rules of :func:`normalize_phone`, for any writing of a number
    (letters of vanity numbers, extensions, other scripts' digits).

    :param text: the trimmed value.
    :param region: the row's country, upper-case ISO alpha-2, or None.
    """
    import phonenumbers

    if _INTERNATIONAL_00.match(text):
        text = "+" + text[2:]
    if text.startswith("+"):
        return _reference_wire(_reference_parse(text, region))
    national = None
    if region is not None:
        national = _reference_parse(text, region)
        if national.__class__ is not Dropped and phonenumbers.is_valid_number(national):
            return _reference_wire(national)
    international = _reference_parse("+" + text, None)
    if international.__class__ is not Dropped and phonenumbers.is_valid_number(international):
        return _reference_wire(international)
    if national is not None:
        return _reference_wire(national)
    if not any(character.isdigit() for character in text):
        return PHONE_INVALID  # no number at all, not a number without its country
    return PHONE_NO_COUNTRY_CODE


def _reference_parse(text: str, region: str | None) -> phonenumbers.PhoneNumber | Dropped:
    """The parsed number, or why ``text`` is not one."""
    import phonenumbers
    from phonenumbers import NumberParseException

    try:
        return phonenumbers.parse(text, region)
    except NumberParseException as error:
        if error.error_type == NumberParseException.INVALID_COUNTRY_CODE and not text.startswith("+"):
            return PHONE_NO_COUNTRY_CODE
        return PHONE_INVALID


def _reference_wire(number: phonenumbers.PhoneNumber | Dropped) -> str | Dropped:
    """Calling code and national number as digits, when the number is possible and not all zeros."""
    import phonenumbers

    if number.__class__ is Dropped:
        return number
    if phonenumbers.is_possible_number_with_reason(number) != _validation_result().IS_POSSIBLE:
        return PHONE_INVALID
    national = phonenumbers.national_significant_number(number)
    if not national.strip("0"):
        return PHONE_INVALID
    return f"{number.country_code}{national}"
