"""The synthetic population, generate_customers' messes, and num_matched for clients that follow Meta's rules.

The normalizer here is a test oracle written from Meta's documented rules (the sandbox must not import
the provider's own identifiers module): rows of population people that it normalizes must all match,
rows of outsiders must not.
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections import Counter
from typing import Any

import phonenumbers
import pytest
from sandbox_support import SMALL_POPULATION, Graph, sha256

from airflow_provider_fbca.sandbox import CUSTOMER_COLUMNS, Sandbox, generate_customers
from airflow_provider_fbca.sandbox.population import NO_MATCH, ExternIds, Population

COUNTRIES = {
    "us": "us",
    "usa": "us",
    "united states": "us",
    "united states of america": "us",
    "gb": "gb",
    "gbr": "gb",
    "united kingdom": "gb",
}
SCHEMA = ["EXTERN_ID", "EMAIL", "PHONE", "FN", "LN", "ZIP", "COUNTRY"]


def customers(count: int, seed: int = 5, match_share: float = 0.6) -> list[dict[str, Any]]:
    return generate_customers(count, match_share=match_share, seed=seed, population=SMALL_POPULATION)


def is_population_row(row: dict[str, Any]) -> bool:
    return not row["external_id"].startswith("CUST-X")


def text(value: Any) -> str:
    return unicodedata.normalize("NFC", str(value)).strip() if value is not None else ""


def normalize_row(row: dict[str, Any], default_country: str = "us") -> list[str]:
    """Meta's documented rules, the oracle: e-mail, phone (with country code), names, ZIP, country."""
    country = COUNTRIES.get(text(row["country"]).lower(), "") or default_country
    email = text(row["email"]).lower()
    email = email if re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email) else ""
    phone = ""
    try:
        parsed = phonenumbers.parse(text(row["phone"]), country.upper())
        if phonenumbers.is_valid_number(parsed):
            phone = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)[1:]
    except phonenumbers.NumberParseException:
        pass
    zip_code = row["zip"]
    if isinstance(zip_code, int):
        zip_code = f"{zip_code:05d}"
    zip_code = text(zip_code).lower().replace(" ", "")
    if country == "us":
        zip_code = zip_code.split("-")[0][:5]
    elif country == "gb" and zip_code:
        zip_code = zip_code[:-3] + zip_code[-3]

    def name(value: Any) -> str:
        return "".join(ch for ch in text(value).lower() if ch.isalpha())

    values = [email, phone, name(row["first_name"]), name(row["last_name"]), zip_code, country]
    return [row["external_id"], *(sha256(v) if v else "" for v in values)]


def test_customers_are_reproducible_and_drawn_in_the_asked_share() -> None:
    rows = customers(200)
    assert rows == customers(200)
    assert rows != customers(200, seed=6)
    assert sum(map(is_population_row, rows)) == 120
    assert len({row["external_id"] for row in rows}) == 200
    assert all(tuple(row) == CUSTOMER_COLUMNS for row in rows)
    assert sum(map(is_population_row, customers(10, match_share=0.0))) == 0
    assert sum(map(is_population_row, customers(10, match_share=1.0))) == 10


def test_population_people_are_stable_and_outsiders_are_not_in_it() -> None:
    population = Population(SMALL_POPULATION, 7)
    assert population.person(5) == Population(SMALL_POPULATION, 7).person(5)
    assert population.person(5) != Population(SMALL_POPULATION, 8).person(5)
    with pytest.raises(IndexError):
        population.person(SMALL_POPULATION)
    rows = customers(300)
    by_id = {int(row["external_id"][5:]) for row in rows if is_population_row(row)}
    assert all(0 <= index < SMALL_POPULATION for index in by_id)
    with pytest.raises(ValueError):
        generate_customers(100, match_share=0.5, population=10)


def test_population_phones_are_valid_numbers() -> None:
    population = Population(SMALL_POPULATION, 7)
    for index in range(0, SMALL_POPULATION, 7):
        person = population.person(index)
        parsed = phonenumbers.parse("+" + person.phone)
        assert phonenumbers.is_valid_number(parsed), person.phone
        assert phonenumbers.region_code_for_number(parsed) == person.country.upper()


def test_customers_carry_the_documented_messes() -> None:
    rows = customers(1500, seed=11)
    zips = [row["zip"] for row in rows]
    assert any(isinstance(z, int) and z < 10_000 for z in zips), "a ZIP whose leading zero was lost"
    assert any(isinstance(z, str) and re.fullmatch(r"\d{5}-\d{4}", z) for z in zips), "ZIP+4"
    assert any(isinstance(z, str) and re.fullmatch(r"[A-Z0-9]{2,4} \d[A-Z]{2}", z) for z in zips), (
        "UK postcode"
    )
    phones = [row["phone"] or "" for row in rows]
    assert any(re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", p) for p in phones)
    assert any(p.startswith("+44 (0)") for p in phones) and any(
        re.fullmatch(r"07\d{3} \d{6}", p) for p in phones
    )
    assert {"United States", "USA", "us", "GB", "United Kingdom", None} <= {row["country"] for row in rows}
    assert {"California", "CA", "ca"} & {row["state"] for row in rows}
    emails = [row["email"] for row in rows]
    assert any(e and e != e.strip() for e in emails) and any(e and e != e.lower() for e in emails)
    assert None in emails and any(e and "@" not in e for e in emails)
    names = [row["first_name"] or "" for row in rows] + [row["last_name"] for row in rows]
    assert any(n != unicodedata.normalize("NFC", n) for n in names), "decomposed accents"
    assert any("'" in n for n in names) and any(n.isupper() for n in names)
    genders = Counter(row["gender"] for row in rows)
    assert {"F", "female", "Male", "Woman", None, "unknown"} <= set(genders)
    assert all(isinstance(row["date_of_birth"], (datetime.date, type(None))) for row in rows)


def test_every_population_row_keeps_a_usable_email_or_phone() -> None:
    for row in customers(1000, seed=12):
        if is_population_row(row):
            _, email, phone, *_ = normalize_row(row)
            assert email or phone, row


def test_every_rendering_normalizes_back_to_the_person() -> None:
    """Each usable phone, and names + ZIP, of a population row normalize to that person's own keys."""
    population = Population(SMALL_POPULATION, 7)
    junk_phones = {None, "123", "000-000-0000", "n/a"}
    for row in customers(1500, seed=21):
        if not is_population_row(row):
            continue
        person = population.person(int(row["external_id"].removeprefix("CUST-")))
        keys = {key: sha256(value) for key, value in person.normalized().items()}
        _, email, phone, first, last, zip_code, _ = normalize_row(row)
        assert email in (keys["EMAIL"], ""), row
        if row["phone"] not in junk_phones:
            assert phone == keys["PHONE"], row
        if row["first_name"] is not None and row["zip"] is not None:
            assert (first, last, zip_code) == (keys["FN"], keys["LN"], keys["ZIP"]), row


def upload_and_count_matches(graph: Graph, rows: list[list[str]], session_id: int) -> dict[str, str]:
    audience_id = graph.create_audience(f"match {session_id}")
    session = {"session_id": session_id, "batch_seq": 1, "last_batch_flag": True}
    assert graph.upload(audience_id, SCHEMA, rows, session=session).status_code == 200
    return graph.get(f"{audience_id}/sessions").json()["data"][0]


def test_rows_normalized_by_metas_rules_match_exactly_the_population_people(graph: Graph) -> None:
    rows = customers(400, seed=13)
    session = upload_and_count_matches(graph, [normalize_row(row) for row in rows], 1)
    assert session["stage"] == "finished"
    assert session["num_received"] == "400"
    assert session["num_matched"] == str(sum(map(is_population_row, rows))) == "240"
    outsiders = [normalize_row(row) for row in rows if not is_population_row(row)]
    assert upload_and_count_matches(graph, outsiders, 2)["num_matched"] == "0"


def test_a_client_that_skips_the_rules_matches_fewer(graph: Graph) -> None:
    """Lowercasing and stripping only (no country codes, no ZIP repair, no NFC) loses people."""
    rows = customers(400, seed=14)

    def sloppy(row: dict[str, Any]) -> list[str]:
        values = [
            str(row[key] or "").strip().lower() for key in ("email", "phone", "first_name", "last_name")
        ]
        values[1] = re.sub(r"\D", "", values[1])
        values += [str(row["zip"] or "").strip().lower(), str(row["country"] or "").strip().lower()]
        return [row["external_id"], *(sha256(v) if v else "" for v in values)]

    # Sloppy first: once a row matched, Meta matches its EXTERN_ID alone, which would hide the loss.
    bad = int(upload_and_count_matches(graph, [sloppy(row) for row in rows], 4)["num_matched"])
    good = int(upload_and_count_matches(graph, [normalize_row(row) for row in rows], 3)["num_matched"])
    assert bad < good == 240


def test_matching_on_names_and_zip_alone(sb: Sandbox, graph: Graph) -> None:
    person = sb.population.person(3)
    fn, ln = (
        sha256("".join(ch for ch in n.lower() if ch.isalpha())) for n in (person.first_name, person.last_name)
    )
    rows = [
        ["", "", "", fn, ln, sha256(person.normalized_zip), ""],
        ["", "", "", fn, ln, sha256("00000"), ""],
    ]
    assert upload_and_count_matches(graph, rows, 5)["num_matched"] == "1"


def test_a_row_takes_the_first_rule_that_finds_someone_and_only_unmatched_rows_try_the_next() -> None:
    """Rules are tried in order per row: e-mail before phone, then names with ZIP; a row no rule finds
    matches nobody. The batch mixes rows matched by each rule, so later rules see only some rows."""
    population = Population(SMALL_POPULATION, seed=5)
    people = [population.person(number) for number in (1, 2, 3)]
    wire = [{key: sha256(value) for key, value in person.normalized().items()} for person in people]
    schema = ("EXTERN_ID", "EMAIL", "PHONE", "FN", "LN", "ZIP")
    rows = [
        ["a", wire[0]["EMAIL"], wire[1]["PHONE"], "", "", ""],  # e-mail wins over the phone
        ["b", sha256("nobody@example.net"), wire[1]["PHONE"], "", "", ""],  # the phone finds person 2
        ["c", "", "", wire[2]["FN"], wire[2]["LN"], wire[2]["ZIP"]],  # names and ZIP find person 3
        ["d", sha256("nobody@example.net"), "", wire[2]["FN"], "", ""],  # no rule finds anyone
        ["e", wire[1]["EMAIL"], "", "", "", ""],
    ]
    assert population.match_rows(schema, rows) == [1, 2, 3, NO_MATCH, 2]
    assert population.match_rows(schema, rows[3:4]) == [NO_MATCH]
    assert population.match_rows(("EXTERN_ID",), rows) == [NO_MATCH] * 5, "no rule without its keys"


def test_a_rule_that_finds_nobody_leaves_every_row_it_asked_to_the_next_rule() -> None:
    """A rule with no hit in the batch (or among the rows left) passes all of them on: later rules still
    find their people, and rows no rule finds match nobody."""
    population = Population(SMALL_POPULATION, seed=5)
    people = [population.person(number) for number in (1, 2, 3)]
    wire = [{key: sha256(value) for key, value in person.normalized().items()} for person in people]
    schema = ("EXTERN_ID", "EMAIL", "PHONE", "FN", "LN", "ZIP")
    nobody, by_names = sha256("nobody@example.net"), [wire[2]["FN"], wire[2]["LN"], wire[2]["ZIP"]]
    no_email_hit = [
        ["a", nobody, wire[1]["PHONE"], "", "", ""],
        ["b", nobody, "", *by_names],
        ["c", "", sha256("10000000000"), "", "", ""],
    ]
    assert population.match_rows(schema, no_email_hit) == [2, 3, NO_MATCH]
    no_phone_hit_among_the_rest = [["a", wire[0]["EMAIL"], "", "", "", ""], ["b", nobody, "", *by_names]]
    assert population.match_rows(schema, no_phone_hit_among_the_rest) == [1, 3]


def test_extern_ids_are_learned_from_matched_rows_in_order() -> None:
    known: dict[str, int] = {"old": 7}
    ids = ExternIds(known)
    everyone = [4, 5]
    ids.link(["x", "y"], everyone)  # every row matched: all learned
    assert known == {"old": 7, "x": 4, "y": 5} and everyone == [4, 5]
    nobody = [NO_MATCH, NO_MATCH, NO_MATCH]
    ids.link(["old", "x", "new"], nobody)  # no row matched: each matched through an id learned before
    assert nobody == [7, 4, NO_MATCH] and "new" not in known
    mixed = [NO_MATCH, 9, NO_MATCH, NO_MATCH]
    ids.link(["z", "z", "z", ""], mixed)  # a row learns "z" for the rows after it, not before
    assert mixed == [NO_MATCH, 9, 9, NO_MATCH] and known["z"] == 9
    with_blank = [NO_MATCH, NO_MATCH]
    ids.link(["", "y"], with_blank)  # a row without an id matches nobody through one
    assert with_blank == [NO_MATCH, 5] and "" not in known
