"""
Issue 12's rules, with cases written from Meta's wording (reference §3): PHONE is "digits with the
country code" (warehouses store E.164 without "+", as text, integers and floats); MADID is "lowercase,
keep hyphens"; CT is "a-z only, lowercase, no punctuation, no special characters, no spaces".
"""

from __future__ import annotations

import hashlib

import phonenumbers
import pytest
from phonenumbers import PhoneNumberType

from airflow_provider_fbca.identifiers import DROP_REASONS, normalize_with_reason, prepare_rows
from airflow_provider_fbca.identifiers.phone import _is_valid


def outcome(key: str, value: object, country: str | None) -> str:
    normalized, reason = normalize_with_reason(key, value, country=country)
    return reason if reason is not None else normalized


@pytest.mark.parametrize(
    ("value", "country", "expected"),
    [
        # 3. no country: the digits are kept when "+digits" is a valid number
        ("16505551212", None, "16505551212"),  # the example (US)
        (16505551212, None, "16505551212"),  # BIGINT
        (16505551212.0, None, "16505551212"),  # DOUBLE
        ("447911123456", None, "447911123456"),  # UK mobile
        (447911123456, None, "447911123456"),
        ("33612345678", None, "33612345678"),  # France
        ("5511987654321", None, "5511987654321"),  # Brazil, São Paulo mobile
        (919876543210.0, None, "919876543210"),  # India
        ("61412345678", None, "61412345678"),  # Australia
        ("819012345678", None, "819012345678"),  # Japan
        ("8613812345678", None, "8613812345678"),  # China
        # ... and dropped when they are not, with the reason that names the fix
        ("6505551212", None, "phone.no_country_code"),
        ("07911 123456", None, "phone.no_country_code"),
        ("13812345678", None, "phone.no_country_code"),
        ("15559876543", None, "phone.no_country_code"),  # 555 is not a valid range: no country to trust
        ("12", None, "phone.no_country_code"),
        ("call me", None, "phone.invalid"),  # no number at all
        # 2. with a country: its valid national number first, else a valid "+digits"
        ("4915112345678", "US", "4915112345678"),  # the example (a German mobile)
        (4915112345678, "US", "4915112345678"),
        ("447911123456", "US", "447911123456"),
        ("6505551212", "US", "16505551212"),
        (6505551212.0, "US", "16505551212"),
        ("0612345678", "FR", "33612345678"),
        (33612345678, "FR", "33612345678"),
        (5511987654321, "BR", "5511987654321"),
        ("9876543210", "IN", "919876543210"),
        ("0412345678", "AU", "61412345678"),
        ("09012345678", "JP", "819012345678"),
        ("13812345678", "CN", "8613812345678"),
        ("555-987-6543", "US", "15559876543"),  # neither reading valid: the possible national one, as before
        # 1. an explicit international prefix wins over the row's country
        ("+1 650 555 1212", "DE", "16505551212"),
        ("00447911123456", "US", "447911123456"),
        ("+49 1511 2345678", "FR", "4915112345678"),
    ],
)
def test_phone_decision_order(value: object, country: str | None, expected: str) -> None:
    assert outcome("PHONE", value, country) == expected


def test_a_phone_with_its_country_code_and_no_country_matches_the_e164_hash() -> None:
    """The wire value of 16505551212 without a country is the hash of Meta's E.164 digits."""
    batch = prepare_rows(["phone"], [["16505551212"], [16505551212], ["+1 650 555 1212"]])
    digest = hashlib.sha256(b"16505551212").hexdigest()
    assert batch.rows == [(digest,)] * 3
    assert not batch.dropped


def example_numbers() -> list[tuple[str, str]]:
    """(calling code, national number) of every region's example numbers, plus near misses."""
    numbers = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS | {"001"}):
        for number_type in (PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE, PhoneNumberType.TOLL_FREE):
            if region == "001":
                continue
            example = phonenumbers.example_number_for_type(region, number_type)
            if example is None:
                continue
            code, nsn = str(example.country_code), phonenumbers.national_significant_number(example)
            numbers += [(code, nsn), (code, nsn[:-1]), (code, nsn + "1"), (code, "9" + nsn[1:])]
            numbers += [(code, nsn[:-2] + "00"), (code, "1" + nsn[1:]), (code, "0" + nsn[1:])]
    for calling_code in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS:
        example = phonenumbers.example_number_for_non_geo_entity(calling_code)
        if example is not None:
            nsn = phonenumbers.national_significant_number(example)
            numbers += [(str(calling_code), nsn), (str(calling_code), nsn[:-1])]
    return numbers


def test_fast_validity_is_phonenumbers_is_valid_number() -> None:
    numbers = example_numbers()
    valid = 0
    for code, nsn in numbers:
        reference = phonenumbers.is_valid_number(phonenumbers.parse(f"+{code}{nsn}"))
        # "+<code><nsn>" is what phonenumbers parses; compare on the number it keeps.
        parsed = phonenumbers.parse(f"+{code}{nsn}")
        kept = phonenumbers.national_significant_number(parsed)
        assert _is_valid(str(parsed.country_code), kept) == reference, (code, nsn)
        valid += reference
    # Both outcomes must be exercised, at scale.
    assert valid > 500
    assert len(numbers) - valid > 500


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("6D92078A-8246-4BA4-AE5B-76104861E7DC", "6d92078a-8246-4ba4-ae5b-76104861e7dc"),  # IDFA
        ("38400000-8cf0-11bd-b23e-10b96e40000d", "38400000-8cf0-11bd-b23e-10b96e40000d"),  # Android
        ("6d92078a82464ba4ae5b76104861e7dc", "6d92078a-8246-4ba4-ae5b-76104861e7dc"),  # UUID without hyphens
        ("AEBE52E7-03EE-455A-B3C4-E57283966239X", "aebe52e7-03ee-455a-b3c4-e57283966239x"),  # not hex: kept
        ("Device-ID-12345678", "device-id-12345678"),
        ("abcdefgh", "abcdefgh"),  # 8 characters: the shortest taken
        ("g" * 64, "g" * 64),  # 64 characters: the longest (not hex, so no hash)
        ("abcdefg", "madid.invalid"),  # 7 characters
        ("g" * 65, "madid.invalid"),
        ("device id 1234", "madid.invalid"),  # spaces
        ("device_id_1234", "madid.invalid"),  # underscores
        ("appareil-élan-1", "madid.invalid"),  # not ASCII
        ("00000000-0000-0000-0000-000000000000", "madid.invalid"),  # tracking limited
        (hashlib.sha256(b"x").hexdigest(), "madid.invalid"),  # a hash matches nobody
        (None, ""),
    ],
)
def test_madid_rule_takes_any_id_of_letters_digits_and_hyphens(value: object, expected: str) -> None:
    assert outcome("MADID", value, None) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("São Paulo", "saopaulo"),
        ("Zürich", "zurich"),
        ("Kraków", "krakow"),
        ("Montréal", "montreal"),
        ("Ḩalab", "halab"),
        ("Gießen", "giessen"),
        ("Łódź", "lodz"),
        ("Tromsø", "tromso"),
        ("Reykjavík", "reykjavik"),
        ("İstanbul", "istanbul"),
        ("Menlo Park", "menlopark"),
        ("\uff34\uff2f\uff2b\uff39\uff2f", "tokyo"),  # full-width TOKYO folds too (NFKD)
        ("東京", "ct.not_latin"),
        ("Москва", "ct.not_latin"),
        ("القاهرة", "ct.not_latin"),
        ("Αθήνα", "ct.not_latin"),
        ("Tokyo 東京", "tokyo"),  # the Latin letters are what is left
        ("12345", "ct.invalid"),
        ("", ""),
    ],
)
def test_city_rule_keeps_a_to_z_only(value: str, expected: str) -> None:
    assert outcome("CT", value, None) == expected


def test_not_latin_is_a_documented_drop_reason() -> None:
    assert "ct.not_latin" in DROP_REASONS
