"""
The batch path's shortcuts equal the slow rules, on the benchmark's rows and on edge cases.

``RowPreparer`` looks repetitive values up in caches inline and hashes e-mails and phones in its generated
loop; the PHONE fast path reads digits from ASCII bytes and rules out "+digits" by cheap conditions. Each
must give the bytes the one-value-at-a-time rules give (``prepare``, ``_phone_reference``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from decimal import Decimal
from pathlib import Path

import pytest

from airflow_provider_fbca.identifiers import RowPreparer, normalize, prepare
from airflow_provider_fbca.identifiers.phone import _phone_digits, _phone_fast, _phone_reference
from airflow_provider_fbca.identifiers.reasons import Dropped
from airflow_provider_fbca.identifiers.text import SHA256, clean, is_sha256_hex

BENCH = Path(__file__).parents[2] / "bench" / "bench_identifiers.py"
DIGEST = "A" * 63 + "f"  # an uppercase SHA-256 hex digest: passes through lowercased


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_identifiers", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return bench_module()


def expected_row(
    keys: tuple[str, ...], row: tuple[object, ...], default_country: str | None
) -> tuple[str, ...]:
    """The wire row value by value: the row's usable COUNTRY drives PHONE, ZIP, ST, else the default."""
    country = normalize("COUNTRY", row[keys.index("COUNTRY")]) if "COUNTRY" in keys else ""
    if not country or is_sha256_hex(country):
        country = default_country
    return tuple(prepare(key, value, country=country) for key, value in zip(keys, row, strict=True))


def assert_batch_equals_value_by_value(
    keys: tuple[str, ...], rows: list[tuple[object, ...]], default_country: str | None
) -> None:
    preparer = RowPreparer(keys, default_country=default_country)
    wire_rows, kept = [], []
    for start in range(0, len(rows), 1000):  # several batches: the caches outlive a batch
        batch = preparer.prepare_rows(rows[start : start + 1000])
        wire_rows += batch.rows
        kept += [start + index for index in batch.kept]
    assert wire_rows == [expected_row(keys, rows[index], default_country) for index in kept]
    identifiers = [index for index, key in enumerate(keys) if key != "EXTERN_ID"]
    for index in sorted(set(range(len(rows))) - set(kept)):  # rejected: no identifier survived
        assert not any(expected_row(keys, rows[index], default_country)[i] for i in identifiers)


@pytest.mark.parametrize("default_country", [None, "US", "GB"])
def test_batch_equals_value_by_value_over_the_bench_rows(bench, default_country: str | None) -> None:
    rows = bench.make_rows(6000)
    assert_batch_equals_value_by_value(bench.KEYS, rows, default_country)


@pytest.mark.parametrize("default_country", [None, "US"])
def test_batch_equals_value_by_value_on_edge_cases(bench, default_country: str | None) -> None:
    keys = bench.KEYS  # EXTERN_ID, EMAIL, PHONE, GEN, DOBY, FN, LN, CT, ST, ZIP, COUNTRY
    edge_values = [
        None, "", "  ", DIGEST, DIGEST.lower(), "x" * 64, float("nan"), math.inf, Decimal("94025.0"), 94025.0,
        True, 1, 1.0, 2134, "02134", ["unhashable"], b"bytes", "\u200bSão Paulo\ufeff", "東京", "+44 (0)20 7946 0958",
        "0044 20 7946 0958", "16505551212", 16505551212, "4915112345678", "(650) 555-1212", "+1 650 555 1212",
        "California", "CA", "United Kingdom", "DEU", "Narnia", "Female", "m", 1980, "1899",
    ]  # fmt: skip
    rows = [
        tuple(edge_values[(row * 7 + column * 3) % len(edge_values)] for column in range(len(keys)))
        for row in range(len(edge_values) * 4)
    ]
    # the same values again in later rows: answered from the caches, with the row's region
    assert_batch_equals_value_by_value(keys, rows + rows[::-1], default_country)


def test_phone_fast_path_equals_phonenumbers_over_the_bench_phones(bench) -> None:
    decided = 0
    for row in bench.make_rows(4000):
        text = row[2]
        if text is None:
            continue
        country = normalize("COUNTRY", row[10]).upper() or None
        for region in {country, None, "US", "GB"}:
            simple = _phone_digits(text)
            fast = None if simple is None else _phone_fast(*simple, region)
            if fast is None:
                continue
            decided += 1
            reference = _phone_reference(text, region)
            assert (fast.reason if isinstance(fast, Dropped) else fast) == (
                reference.reason if isinstance(reference, Dropped) else reference
            ), (text, region)
    assert decided > 10_000  # the fast path carries the bench's phones itself


def test_email_check_in_two_parts_equals_the_whole_address_pattern() -> None:
    import random

    from airflow_provider_fbca.identifiers.contact import _EMAIL

    rng = random.Random(12)
    alphabet = 'ab.@-_+ \t\u00a0\u2003,;:<>()[]\\"é1'
    samples = [
        "a@b.co", "a@b.c", "a@@b.co", "@b.co", "a@", "a@.co", "a@b..co", "a.@b.co", "a@b.co.", "a b@c.de",
        "a@b\u00a0c.de", "a@b.c\u2003d", "a@b@c.de", "josé@exämple.com", "a@b.co@d.ef", "a@b.co,", "a\x1c@b.co",
    ]  # fmt: skip
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14))) for _ in range(20_000)]
    samples += [
        f"{rng.choice(['a', 'a.b', 'é'])}@{rng.choice(['b', 'c.d', 'x-y'])}.{rng.choice(['co', 'c', 'org'])}"
        for _ in range(500)
    ]
    for _ in range(2):  # the second round answers the domains from the cache
        for text in samples:
            cleaned = clean(text)
            if not cleaned:
                continue  # a missing value, not an address
            email = cleaned.lower().rstrip(".")
            expected = email if _EMAIL.fullmatch(email) else ""
            assert normalize("EMAIL", text) == expected, text
    assert sum(bool(normalize("EMAIL", text)) for text in samples) > 100  # valid addresses were tried too


@pytest.mark.parametrize("text", ["", "a", "person.1@example.com", "são paulo", "東京", "x" * 200])
def test_the_hot_paths_sha256_is_hashlibs(text: str) -> None:
    assert SHA256(text.encode()).hexdigest() == hashlib.sha256(text.encode()).hexdigest()
