"""One table-driven test per normalization rule of issue 5, plus Meta's published test vectors."""

from __future__ import annotations

import hashlib
from datetime import date, datetime
from decimal import Decimal

import pytest

from airflow_provider_fbca.identifiers import normalize, normalize_with_reason, prepare


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def check(cases: list[tuple], key: str) -> None:
    """Each case is (value, country, expected): the normalized value, "" when missing, or the drop reason."""
    for value, country, expected in cases:
        normalized, reason = normalize_with_reason(key, value, country=country)
        got = reason if reason is not None else normalized
        assert got == expected, f"{key} {value!r} (country {country}): got {got!r}, want {expected!r}"


# --- Meta's published vectors (reference §9), through the full prepare() path -------------------------

META_VECTORS = [
    ("EMAIL", "mary@example.com", None, "f1904cf1a9d73a55fa5de0ac823c4403ded71afd4c3248d00bdcd0866552bb79"),
    (
        "EMAIL",
        "John_Smith@gmail.com",
        None,
        "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f",
    ),
    ("EMAIL", "joe@example.com", None, "2481f36dfc515ca76451aaadf1399026942a01ee50c6d0a61988b43cef039bc2"),
    ("PHONE", "15559876543", "US", "1ef970831d7963307784fa8688e8fce101a15685d62aa765fed23f3a2c576a4e"),
    ("PHONE", "+1 555 987 6543", None, "1ef970831d7963307784fa8688e8fce101a15685d62aa765fed23f3a2c576a4e"),
    ("PHONE", "(650)555-1212", "US", "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"),
    ("FN", "Mary", None, "6915771be1c5aa0c886870b6951b03d7eafc121fea0e80a5ea83beb7c449f4ec"),
    ("LN", "Valéry", None, "08e1996b5dd49e62a4b4c010d44e4345592a863bb9f8e3976219bac29417149c"),
    ("FN", "정", None, "8fa8cd9c440be61d0151429310034083132b35975c4bea67fdd74158eb51db14"),
    ("COUNTRY", "United States", None, "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"),
    ("GEN", "Male", None, "62c66a7a5dd70c3146618063c344e531e6d4b59e379808443ce962b3abd63c5a"),
    ("GEN", "F", None, "252f10c83610ebca1a059c0bae8255eba2f95be4d1d7bcfa89d7248a82d9f111"),
    ("CT", "  Test ", None, "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
]


@pytest.mark.parametrize(("key", "value", "country", "wire"), META_VECTORS)
def test_meta_published_vectors(key: str, value: str, country: str | None, wire: str) -> None:
    assert prepare(key, value, country=country) == wire


def test_valery_is_hashed_as_nfc_utf8_whatever_the_input_form() -> None:
    decomposed = "Vale\u0301ry"  # "e" + combining acute: what some systems store
    assert prepare("LN", decomposed) == "08e1996b5dd49e62a4b4c010d44e4345592a863bb9f8e3976219bac29417149c"


def test_empty_values_are_sent_empty_never_as_the_hash_of_nothing() -> None:
    empty_hash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    for key in ("EMAIL", "PHONE", "FN", "LN", "CT", "ST", "ZIP", "COUNTRY", "GEN", "DOBY"):
        for missing in (None, "", "   ", float("nan")):
            assert prepare(key, missing, country="US") == "", (key, missing)
    assert prepare("DOBM", "Jan") != empty_hash


# --- Hashing and pass-through -----------------------------------------------------------------------


def test_hashed_keys_send_sha256_of_the_normalized_value() -> None:
    assert prepare("email", " Mary@Example.COM ") == sha256("mary@example.com")
    assert prepare("zip", "SW1A 1AA", country="GB") == sha256("sw1a1")


def test_an_already_hashed_value_passes_through_lowercased_and_is_not_hashed_twice() -> None:
    digest = sha256("mary@example.com")
    for key in ("EMAIL", "PHONE", "FN", "LN", "CT", "ST", "ZIP", "COUNTRY", "GEN", "DOBY", "DOBM", "DOBD"):
        assert prepare(key, digest.upper(), country="US") == digest, key
        assert prepare(key, f"  {digest} ", country="US") == digest, key


def test_a_hashed_phone_is_recognised_before_non_digits_are_stripped() -> None:
    digest = sha256("16505551212")
    assert prepare("PHONE", digest.upper()) == digest  # no country needed: it is not parsed


@pytest.mark.parametrize(
    ("key", "value", "wire"),
    [
        ("EXTERN_ID", "  AbC.123. ", "AbC.123."),  # the SDK lowercases and dot-trims it
        ("MADID", "6D92078A-8246-4BA4-AE5B-76104861E7DC", "6d92078a-8246-4ba4-ae5b-76104861e7dc"),
        ("APPUID", " 1234567890 ", "1234567890"),
        ("PAGEUID", 998877, "998877"),
        ("LOOKALIKE_VALUE", "44.50", "44.5"),
    ],
)
def test_unhashed_keys_go_on_the_wire_as_normalized(key: str, value: object, wire: str) -> None:
    assert prepare(key, value) == wire


# --- One test per rule --------------------------------------------------------------------------------


def test_all_text_is_nfc_then_trimmed() -> None:
    assert normalize("FN", "\ufeff  Jose\u0301\u200b ") == "josé"
    assert normalize("EMAIL", "\u00a0ANNA@example.org\t") == "anna@example.org"
    assert normalize("EXTERN_ID", "\tCust-42  ") == "Cust-42"


def test_email_rule() -> None:
    check(
        [
            ("  Mary@Example.COM ", None, "mary@example.com"),
            ("mary@example.com.", None, "mary@example.com"),
            ("josé@exämple.de", None, "josé@exämple.de"),
            ("first.last+tag@sub.example.co.uk", None, "first.last+tag@sub.example.co.uk"),
            (b"Bytes@Example.com", None, "bytes@example.com"),
            ("not an email", None, "email.invalid"),
            ("mary@example", None, "email.invalid"),
            ("mary@@example.com", None, "email.invalid"),
            ("mary@example.c", None, "email.invalid"),
            ("mary smith@example.com", None, "email.invalid"),
            ("a@b.com, c@d.com", None, "email.invalid"),
            ("Mary <mary@example.com>", None, "email.invalid"),
            ("@example.com", None, "email.invalid"),
            (b"\xff\xfe@example.com", None, "email.invalid"),
            (None, None, ""),
        ],
        "EMAIL",
    )


def test_email_local_part_characters() -> None:
    # A local part refuses whitespace and the separators of a list of addresses, whatever the script: ASCII
    # parts are told by a faster path than the pattern other parts go through, with the same verdicts.
    for character in [chr(code) for code in range(128)] + ["\u00a0", "\u2003", "\u3000", "\u00e9", "\u00df"]:
        value = f"a{character}b@example.com"
        refused = character.isspace() or character in '@,;:<>()[]\\"'
        check([(value, None, "email.invalid" if refused else value.lower())], "EMAIL")


def test_phone_rule() -> None:
    check(
        [
            ("(650) 555-1212", "US", "16505551212"),
            ("650.555.1212", "us", "16505551212"),
            ("1-650-555-1212", "US", "16505551212"),
            ("+1 (650) 555-1212", None, "16505551212"),
            ("+1 650 555 1212", "GB", "16505551212"),  # written with its code: the row's country is moot
            ("001 650 555 1212", None, "16505551212"),  # international 00 prefix
            ("07700 900123", "GB", "447700900123"),  # national trunk 0 goes, calling code comes
            ("+44 (0)7700-900123", None, "447700900123"),  # trunk (0) after the calling code goes
            ("+44 07700 900123", None, "447700900123"),
            ("0044 7700 900123", None, "447700900123"),
            ("447700900123", "GB", "447700900123"),  # calling code without "+"
            ("01 42 68 53 00", "FR", "33142685300"),
            ("030 1234567", "DE", "49301234567"),
            ("+39 06 1234 5678", None, "390612345678"),  # Italy keeps its leading 0
            ("0412 345 678", "AU", "61412345678"),
            ("1-800-FLOWERS", "US", "18003569377"),  # vanity letters
            ("+1 650 555 1212 ext. 7", None, "16505551212"),  # extension is not part of the number
            (16505551212, "US", "16505551212"),  # BIGINT column
            (6505551212.0, "US", "16505551212"),  # float column
            (Decimal("6505551212"), "US", "16505551212"),
            ("(650) 555-1212", None, "phone.no_country_code"),
            ("07700 900123", None, "phone.no_country_code"),
            ("555-1212", "US", "phone.invalid"),  # local only: no area code
            ("12", "US", "phone.invalid"),
            ("+1 650 555 12120", None, "phone.invalid"),  # too long
            ("0000000000", "US", "phone.invalid"),
            ("+44 0000 000000", None, "phone.invalid"),
            ("+999 123 4567", None, "phone.invalid"),  # no such calling code
            ("call me", "US", "phone.invalid"),
            ("", "US", ""),
        ],
        "PHONE",
    )


def test_phone_keeps_valid_shaped_numbers_that_are_not_yet_assigned() -> None:
    # Meta's own example number is in the fictional 555 range: is_valid_number() rejects it, we keep it.
    import phonenumbers

    assert not phonenumbers.is_valid_number(phonenumbers.parse("+15559876543"))
    assert normalize("PHONE", "555-987-6543", country="US") == "15559876543"


def test_gender_rule() -> None:
    check(
        [
            ("m", None, "m"),
            ("Male", None, "m"),
            (" MAN ", None, "m"),
            ("boy", None, "m"),
            ("F", None, "f"),
            ("female", None, "f"),
            ("Woman", None, "f"),
            ("girl", None, "f"),
            ("M.", None, "m"),
            ("unknown", None, "gen.unknown"),  # the SDK sends "u"
            ("X", None, "gen.unknown"),
            ("non-binary", None, "gen.unknown"),
            ("mf", None, "gen.unknown"),
            (None, None, ""),
        ],
        "GEN",
    )


def test_birth_year_rule() -> None:
    this_year = date.today().year
    check(
        [
            ("1997", None, "1997"),
            (1997, None, "1997"),
            (1997.0, None, "1997"),
            (Decimal("1997"), None, "1997"),
            (date(1997, 2, 16), None, "1997"),
            ("1900", None, "1900"),
            (str(this_year), None, str(this_year)),
            (str(this_year + 1), None, "doby.out_of_range"),
            ("1899", None, "doby.out_of_range"),
            ("97", None, "doby.invalid"),  # two-digit years are not guessed
            ("1997-02-16", None, "doby.invalid"),
            ("nineteen", None, "doby.invalid"),
        ],
        "DOBY",
    )


def test_birth_month_rule() -> None:
    check(
        [
            ("2", None, "02"),
            (2, None, "02"),
            ("02", None, "02"),
            (12.0, None, "12"),
            ("February", None, "02"),
            ("feb", None, "02"),
            ("SEPT.", None, "09"),
            (datetime(1990, 11, 3, 8, 30), None, "11"),
            ("13", None, "dobm.out_of_range"),
            ("0", None, "dobm.out_of_range"),
            ("Febr", None, "dobm.invalid"),
            ("-1", None, "dobm.invalid"),
        ],
        "DOBM",
    )


def test_birth_day_rule() -> None:
    check(
        [
            ("7", None, "07"),
            (7, None, "07"),
            ("31", None, "31"),
            (date(1990, 1, 9), None, "09"),
            ("32", None, "dobd.out_of_range"),
            ("00", None, "dobd.out_of_range"),
            ("7th", None, "dobd.invalid"),
        ],
        "DOBD",
    )


def test_first_and_last_name_rule() -> None:
    check(
        [
            ("Mary", None, "mary"),
            ("  O'Brien-Smith ", None, "obriensmith"),
            ("Mary Ann", None, "maryann"),
            ("José", None, "josé"),  # the SDK sends "jos"
            ("Müller", None, "müller"),
            ("정", None, "정"),
            ("Владимир", None, "владимир"),
            ("Jr.", None, "jr"),
            ("R2-D2", None, "rd"),
            ("--", None, "fn.invalid"),
        ],
        "FN",
    )
    check(
        [("Nguyễn", None, "nguyễn"), ("van der Berg", None, "vanderberg"), ("123", None, "ln.invalid")], "LN"
    )


def test_first_initial_rule() -> None:
    check(
        [
            ("John", None, "j"),  # the SDK sends "john"
            ("J.", None, "j"),
            (" élodie", None, "é"),
            ("'Aisha", None, "a"),
            ("정민", None, "정"),
            ("42", None, "fi.invalid"),
        ],
        "FI",
    )


def test_city_rule() -> None:
    check(
        [
            ("Menlo Park", None, "menlopark"),
            ("St. Louis", None, "stlouis"),
            ("Winston-Salem", None, "winstonsalem"),
            ("São Paulo", None, "saopaulo"),  # the SDK sends "sopaulo"
            ("London 2", None, "london"),
            ("12345", None, "ct.invalid"),
        ],
        "CT",
    )


def test_state_rule() -> None:
    check(
        [
            ("CA", "US", "ca"),
            ("California", "US", "ca"),
            ("new york", "US", "ny"),
            ("NewYork", "US", "ny"),
            ("N.Y.", "US", "ny"),
            ("District of Columbia", "US", "dc"),
            ("Washington D.C.", "US", "dc"),
            ("Puerto Rico", "US", "pr"),
            ("New Hampshire", None, "nh"),  # a full US state name needs no country
            ("Calif", "US", "st.unknown"),
            ("Ontario", "CA", "ontario"),
            ("Île-de-France", "FR", "îledefrance"),
            ("Greater London", "GB", "greaterlondon"),
            ("NSW", "AU", "nsw"),
        ],
        "ST",
    )


def test_zip_rule() -> None:
    check(
        [
            ("94025", "US", "94025"),
            ("94025-1234", "US", "94025"),
            ("940251234", "US", "94025"),
            (2134, "US", "02134"),  # an INTEGER column lost the leading zero
            (2134.0, "US", "02134"),
            ("2134", "US", "02134"),  # a spreadsheet did the same
            (21341234, "US", "02134"),  # ZIP+4 stored as a number
            ("02134-1234", "US", "02134"),
            ("9402", "US", "09402"),
            ("12", "US", "zip.invalid"),
            ("SW1A", "US", "zip.invalid"),
            ("SW1A 1AA", "GB", "sw1a1"),
            ("sw1a1aa", "GB", "sw1a1"),
            ("M1 1AE", "GB", "m11"),
            ("EC1A 1BB", "GB", "ec1a1"),
            ("W1A 0AX", "GB", "w1a0"),
            ("SW1A", "GB", "sw1a"),  # outward code only
            ("GY1 1AA", "GG", "gy11"),  # Guernsey uses UK postcodes
            ("not a postcode", "GB", "zip.invalid"),
            ("K1A 0B1", "CA", "k1a0b1"),
            ("75001", "FR", "75001"),
            ("01310-100", "BR", "01310-100"),
            ("94025-1234", None, "94025"),  # ZIP+4 only exists in the US
            ("SW1A 1AA", None, "sw1a1aa"),
            # Five ASCII digits are kept as they are (a fast path), except by the UK's rule, and only ASCII.
            ("12345", None, "12345"),
            ("12345", "DE", "12345"),
            ("12345", "GB", "zip.invalid"),
            ("12345", "GG", "zip.invalid"),
            ("\u0661\u0662\u0663\u0664\u0665", "US", "zip.invalid"),  # Arabic-Indic digits
            ("\uff11\uff12\uff13\uff14\uff15", "US", "zip.invalid"),  # full-width digits
        ],
        "ZIP",
    )


def test_country_rule() -> None:
    check(
        [
            ("US", None, "us"),
            ("us", None, "us"),
            ("USA", None, "us"),
            ("U.S.A.", None, "us"),
            ("United States of America", None, "us"),
            ("United Kingdom", None, "gb"),  # the SDK sends "un"
            ("UK", None, "gb"),
            ("GBR", None, "gb"),
            ("Great Britain", None, "gb"),
            ("Deutschland", None, "country.unknown"),  # English names only
            ("Germany", None, "de"),
            ("Côte d'Ivoire", None, "ci"),
            ("Cote dIvoire", None, "ci"),
            ("Korea, Republic of", None, "kr"),
            ("South Korea", None, "kr"),
            ("The Netherlands", None, "nl"),
            ("Türkiye", None, "tr"),
            ("Turkey", None, "tr"),
            ("Viet Nam", None, "vn"),
            ("Atlantis", None, "country.unknown"),
            ("XX", None, "country.unknown"),
            ("U", None, "country.unknown"),
        ],
        "COUNTRY",
    )


def test_madid_rule() -> None:
    check(
        [
            ("6D92078A-8246-4BA4-AE5B-76104861E7DC", None, "6d92078a-8246-4ba4-ae5b-76104861e7dc"),
            ("{6d92078a-8246-4ba4-ae5b-76104861e7dc}", None, "6d92078a-8246-4ba4-ae5b-76104861e7dc"),
            ("00000000-0000-0000-0000-000000000000", None, "madid.invalid"),  # tracking limited
            (sha256("x"), None, "madid.invalid"),  # a hashed MADID matches nobody
            ("not an id", None, "madid.invalid"),
        ],
        "MADID",
    )


def test_extern_id_rule() -> None:
    check(
        [
            ("  AbC.123. ", None, "AbC.123."),
            ("Cust-ÉLAN", None, "Cust-ÉLAN"),
            (12345, None, "12345"),
            (12345.0, None, "12345"),
            (Decimal("12345"), None, "12345"),
            (b"bytes-id", None, "bytes-id"),
            (b"\xff", None, "extern_id.invalid"),
            (None, None, ""),
        ],
        "EXTERN_ID",
    )


def test_app_and_page_user_ids_are_kept_as_given() -> None:
    check([(" 1234567890 ", None, "1234567890"), (1234567890, None, "1234567890")], "APPUID")
    check([("PSID-77", None, "PSID-77"), (b"\xff", None, "pageuid.invalid")], "PAGEUID")


def test_lookalike_value_rule() -> None:
    check(
        [
            (44.5, None, "44.5"),
            (140, None, "140"),
            (0, None, "0"),
            (Decimal("0.90"), None, "0.9"),
            ("  1e3 ", None, "1000"),
            (Decimal("-0"), None, "0"),
            (-1, None, "lookalike_value.negative"),
            ("-0.01", None, "lookalike_value.negative"),
            ("$12", None, "lookalike_value.invalid"),
            ("1,234.50", None, "lookalike_value.invalid"),  # thousands vs decimal comma: not guessed
            (float("inf"), None, "lookalike_value.invalid"),
            ("NaN", None, "lookalike_value.invalid"),
            ("1e999999", None, "lookalike_value.invalid"),
            (True, None, "lookalike_value.invalid"),
        ],
        "LOOKALIKE_VALUE",
    )


def test_typed_values_from_database_drivers() -> None:
    assert normalize("EXTERN_ID", 12345.0) == "12345"  # never "12345.0"
    assert normalize("EXTERN_ID", 1.5) == "1.5"
    assert normalize("CT", bytearray(b"Paris")) == "paris"
    assert normalize("EXTERN_ID", datetime(2024, 5, 1, 12, 0)) == "2024-05-01T12:00:00"
    assert normalize("FN", memoryview("Zoë".encode())) == "zoë"
    assert normalize_with_reason("EXTERN_ID", float("inf")) == ("", "extern_id.invalid")


def test_us_territories_use_us_zip_codes() -> None:
    check([(901, "PR", "00901"), ("00901-1234", "PR", "00901"), (96910, "GU", "96910")], "ZIP")
