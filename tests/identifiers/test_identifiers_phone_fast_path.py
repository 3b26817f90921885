"""
The PHONE fast path must agree with phonenumbers on every region's numbers, in every common writing.

``_phone_fast`` re-implements the steps of ``phonenumbers.parse`` + ``is_possible_number`` for digits
and separators; ``_phone_reference`` calls phonenumbers itself. Both are fed the example numbers of
every region phonenumbers knows, written nationally, internationally, with "00", with a trunk "(0)",
without "+", with a digit too many or too few, parsed with the right, a wrong, or no country.
"""

from __future__ import annotations

import random

import phonenumbers
import pytest
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE

from airflow_provider_fbca import identifiers
from airflow_provider_fbca.identifiers import Dropped
from airflow_provider_fbca.identifiers.phone import _is_valid, _phone_digits, _phone_fast, _phone_reference

TYPES = (PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE, PhoneNumberType.TOLL_FREE)


def writings(region: str) -> list[str]:
    """Ways people write the region's example numbers, plus near misses."""
    texts = []
    for number_type in TYPES:
        example = phonenumbers.example_number_for_type(region, number_type)
        if example is None:
            continue
        national = phonenumbers.format_number(example, PhoneNumberFormat.NATIONAL)
        international = phonenumbers.format_number(example, PhoneNumberFormat.INTERNATIONAL)
        e164 = phonenumbers.format_number(example, PhoneNumberFormat.E164)
        code = str(example.country_code)
        nsn = phonenumbers.national_significant_number(example)
        texts += [
            national,
            international,
            e164,
            e164[1:],  # calling code without "+"
            "00" + e164[1:],
            f"+{code} (0){nsn}",  # trunk written after the calling code
            f"+{code} 0{nsn}",
            f"0{nsn}",
            nsn,
            nsn[:-1],  # a digit short
            nsn + "7",  # a digit too many
            e164 + "07",
            national.replace(" ", "."),
            national.replace(" ", "/"),
        ]
    return texts


def outcome(result: str | Dropped) -> str:
    return result.reason if isinstance(result, Dropped) else result


def fast_or_none(text: str, region: str | None) -> str | Dropped | None:
    """What the fast path decides alone (None: it hands the number to phonenumbers)."""
    simple = _phone_digits(text)
    return None if simple is None else _phone_fast(*simple, region)


@pytest.mark.parametrize("other_region", [None, "US", "GB"])
def test_fast_path_agrees_with_phonenumbers_for_every_region(other_region: str | None) -> None:
    decided = disagreements = 0
    samples = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for text in writings(region):
            for country in (region, other_region):
                fast = fast_or_none(text, country)
                if fast is None:
                    continue
                decided += 1
                reference = _phone_reference(text, country)
                if outcome(fast) != outcome(reference):
                    disagreements += 1
                    samples.append((text, country, outcome(fast), outcome(reference)))
    assert disagreements == 0, samples[:20]
    # The fast path must actually carry the load, not hand everything to phonenumbers.
    assert decided > 5000


def test_fast_path_decides_the_common_shapes_itself() -> None:
    for text, region in [
        ("(650) 555-1212", "US"),
        ("+1 650 555 1212", None),
        ("07700 900123", "GB"),
        ("+44 (0)20 7946 0958", None),
        ("0044 20 7946 0958", None),
        ("01 42 68 53 00", "FR"),
    ]:
        assert fast_or_none(text, region) is not None, text


def test_national_number_without_country_is_not_guessed() -> None:
    # "6505551212" could be read as Singapore (+65) 05551212; without a country it is dropped.
    assert identifiers.normalize_with_reason("PHONE", "6505551212") == ("", "phone.no_country_code")


def test_validity_fast_path_equals_phonenumbers_for_codes_shared_by_regions() -> None:
    # +1 (25 regions), +44, +61, ...: the first region claiming a number decides, found in one regex call.
    rng = random.Random(12)
    checked = 0
    for code, regions in COUNTRY_CODE_TO_REGION_CODE.items():
        if len(regions) < 2:
            continue
        nationals = [
            phonenumbers.national_significant_number(example)
            for region in regions
            for number_type in TYPES
            if (example := phonenumbers.example_number_for_type(region, number_type)) is not None
        ]
        nationals += [
            "".join(rng.choice("0123456789") for _ in range(rng.randint(6, 12))) for _ in range(400)
        ]
        for national in nationals:
            number = phonenumbers.PhoneNumber(country_code=code, national_number=int(national))
            national = phonenumbers.national_significant_number(number)  # leading zeros go, as parsed
            assert _is_valid(str(code), national) == phonenumbers.is_valid_number(number), (code, national)
            checked += 1
    assert checked > 4000
