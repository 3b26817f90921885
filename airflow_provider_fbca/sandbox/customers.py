"""Warehouse rows of customers, a chosen share of whom exist in the sandbox's population.

:func:`generate_customers` renders people the way real warehouses hold them. A client that normalizes
by Meta's documented rules gets every row drawn from the population matched (each such row keeps at
least one usable e-mail or phone, as below); rows of people from outside never match.

The messes, per column (shares are approximate, drawn per row from ``seed``):

- ``external_id``: ``CUST-0000123`` for population person 123 (stable across seeds), ``CUST-X<seed>-<n>``
  for outsiders; unique within one call.
- ``email``: lowercase; Mixed.Case@Example.com; UPPER CASE; surrounded by spaces or a tab; missing
  (None), empty, or not an address (``... at example.com``, ``n/a``). Only when the phone is usable
  and the country present is the e-mail unusable.
- ``phone`` (US, country US): ``(650) 555-1212``, ``650-555-1212``, ``650.555.1212``, ``6505551212``,
  ``+1 650 555 1212``, ``1-650-555-1212``, ``+1 (650) 555-1212``.
  (GB mobile, country GB): ``07712 345678``, ``07712345678``, ``+44 7712 345678``,
  ``+44 (0)7712 345678``, ``0044 7712 345678``, ``447712345678``.
  (GB London landline): ``020 7123 4567``, ``(020) 7123 4567``, ``+44 (0)20 7123 4567``,
  ``+44 20 7123 4567``. Sometimes missing or junk (``123``, ``000-000-0000``, ``n/a``) when the e-mail
  is usable.
- ``first_name`` / ``last_name``: as written, UPPER, lower, padded with spaces, accents decomposed (NFD:
  ``Zoe`` + U+0308); names carry apostrophes and hyphens (``O'Brien``, ``Smith-Jones``) and letters of
  other scripts (``Łukasik``, ``Øvergård``); a few first names missing.
- ``city``: as written, UPPER, lower with trailing space; ``state``: US code (``CA``, ``ca``) or full
  name (``California``, ``NEW YORK``, `` north carolina``), GB rows a nation (``England``) or None;
  sometimes missing.
- ``zip``: US ``"02108"``, the int ``2108`` (leading zero lost), ZIP+4 ``"02108-1234"``, padded
  ``" 94025 "``; GB ``"SW1A 1AA"``, ``"sw1a 1aa"``, ``"SW1A1AA"``; sometimes missing.
- ``country``: US ``US``, ``us``, ``USA``, ``United States``, ``United States of America`` or missing
  (the sync's default country applies; such rows keep a usable e-mail); GB ``GB``, ``gb``, ``GBR``,
  ``United Kingdom`` (never missing: their phones are national).
- ``date_of_birth``: a ``datetime.date``, or None.
- ``gender``: ``F``/``M``, ``female``/``male``, ``Female``/``Male``, ``f``/``m``, ``Woman``/``Man``,
  None, or unusable (``unknown``, ``X``).
"""

from __future__ import annotations

import random
import unicodedata
from typing import Any

from airflow_provider_fbca.sandbox.population import Person, Population, make_person

#: The columns of every generated row, in order (the demo's warehouse table has these columns).
CUSTOMER_COLUMNS = (
    "external_id",
    "email",
    "phone",
    "first_name",
    "last_name",
    "city",
    "state",
    "zip",
    "country",
    "date_of_birth",
    "gender",
)
_US_COUNTRY = ("US", "us", "USA", "United States", "United States of America")
_GB_COUNTRY = ("GB", "gb", "GBR", "United Kingdom")
_GENDER = {
    "f": ("F", "female", "Female", "f", "Woman"),
    "m": ("M", "male", "Male", "m", "Man"),
}
_JUNK_PHONES = ("123", "000-000-0000", "n/a")
MAX_OUTSIDER_ATTEMPTS = 50


def generate_customers(
    count: int,
    *,
    match_share: float = 0.6,
    seed: int = 0,
    population: int = 50_000,
    population_seed: int = 7,
) -> list[dict[str, Any]]:
    """
    Return ``count`` messy warehouse rows, ``match_share`` of them people of the sandbox's population.

    :param count: how many rows.
    :param match_share: the share (0..1) of rows drawn from the population.
    :param seed: the seed of the draw and of the messes.
    :param population: the sandbox's population size (``Sandbox(population=...)``).
    :param population_seed: the sandbox's seed (``Sandbox(seed=...)``).
    """
    if count < 0 or not 0.0 <= match_share <= 1.0:
        raise ValueError("count must be >= 0 and match_share within 0..1")
    matching = round(count * match_share)
    if matching > population:
        raise ValueError(f"{matching} matching customers cannot be drawn from a population of {population}")
    people = Population(population, population_seed)
    rng = random.Random(seed)
    chosen = [people.person(index) for index in rng.sample(range(population), matching)]
    outsiders = [_outsider(people, seed, number) for number in range(count - matching)]
    rows = [_render(person, rng, seed, number) for number, person in enumerate(chosen + outsiders)]
    rng.shuffle(rows)
    return rows


def _outsider(people: Population, seed: int, number: int) -> Person:
    """Someone who shares no e-mail, phone, or names + ZIP with the population."""
    for attempt in range(MAX_OUTSIDER_ATTEMPTS):
        person = make_person(number * MAX_OUTSIDER_ATTEMPTS + attempt, seed, outsider=True)
        if not people.contains(person):
            return person
    raise RuntimeError("could not draw an outsider; the population is too dense")


def _render(person: Person, rng: random.Random, seed: int, number: int) -> dict[str, Any]:
    """One warehouse row for a person, with the messes documented in this module."""
    us = person.country == "us"
    country = rng.choice(_US_COUNTRY) if rng.random() < 0.85 or not us else None
    email_usable = country is None or rng.random() < 0.9
    phone_usable = not email_usable or rng.random() < 0.9
    external_id = f"CUST-{person.index:07d}" if person.index >= 0 else f"CUST-X{seed}-{number:07d}"
    return {
        "external_id": external_id,
        "email": _email(person.email, rng) if email_usable else rng.choice((None, "", _broken_email(person))),
        "phone": _phone(person, rng) if phone_usable else rng.choice((None, *_JUNK_PHONES)),
        "first_name": None if rng.random() < 0.02 else _name(person.first_name, rng),
        "last_name": _name(person.last_name, rng),
        "city": _case(person.city, rng),
        "state": _state(person, rng),
        "zip": _zip(person, rng),
        "country": country if us else rng.choice(_GB_COUNTRY),
        "date_of_birth": None if rng.random() < 0.1 else person.birth_date,
        "gender": _gender(person.gender, rng),
    }


def _email(email: str, rng: random.Random) -> str:
    local, domain = email.split("@")
    style = rng.random()
    if style < 0.4:
        return email
    if style < 0.65:
        return f"{local.title()}@{domain.title()}"
    if style < 0.8:
        return rng.choice(("  ", " ", "\t")) + email + rng.choice((" ", "  ", ""))
    return email.upper()


def _broken_email(person: Person) -> str:
    return person.email.replace("@", " at ") if person.index % 2 else "n/a"


def _phone(person: Person, rng: random.Random) -> str:
    digits = person.phone
    if person.country == "us":
        area, exchange, line = digits[1:4], digits[4:7], digits[7:]
        formats = (
            f"({area}) {exchange}-{line}",
            f"{area}-{exchange}-{line}",
            f"{area}.{exchange}.{line}",
            f"{area}{exchange}{line}",
            f"+1 {area} {exchange} {line}",
            f"1-{area}-{exchange}-{line}",
            f"+1 ({area}) {exchange}-{line}",
        )
    elif digits.startswith("4420"):
        local = digits[4:]
        formats = (
            f"020 {local[:4]} {local[4:]}",
            f"(020) {local[:4]} {local[4:]}",
            f"+44 (0)20 {local[:4]} {local[4:]}",
            f"+44 20 {local[:4]} {local[4:]}",
        )
    else:
        mobile = digits[2:]
        formats = (
            f"0{mobile[:4]} {mobile[4:]}",
            f"0{mobile}",
            f"+44 {mobile[:4]} {mobile[4:]}",
            f"+44 (0){mobile[:4]} {mobile[4:]}",
            f"0044 {mobile[:4]} {mobile[4:]}",
            digits,
        )
    return rng.choice(formats)


def _name(name: str, rng: random.Random) -> str:
    style = rng.random()
    if style < 0.55:
        return name
    if style < 0.65:
        return name.upper()
    if style < 0.75:
        return name.lower()
    if style < 0.85:
        return f" {name}  "
    return unicodedata.normalize("NFD", name)


def _case(text: str, rng: random.Random) -> str:
    style = rng.random()
    if style < 0.7:
        return text
    return text.upper() if style < 0.85 else text.lower() + " "


def _state(person: Person, rng: random.Random) -> str | None:
    if rng.random() < 0.05:
        return None
    if person.state_code is None:
        return person.state_name if rng.random() < 0.3 else None
    return rng.choice(
        (
            person.state_code,
            person.state_code.lower(),
            person.state_name,
            person.state_name.upper(),
            " " + person.state_name.lower(),
        )
    )


def _zip(person: Person, rng: random.Random) -> str | int | None:
    style = rng.random()
    if style < 0.05:
        return None
    code = person.zip_code
    if person.country == "gb":
        return rng.choice((code, code, code.lower(), code.replace(" ", "")))
    if style < 0.5:
        return code
    if style < 0.75:
        return int(code)
    if style < 0.9:
        return f"{code}-{rng.randrange(10_000):04d}"
    return f" {code} "


def _gender(gender: str, rng: random.Random) -> str | None:
    style = rng.random()
    if style < 0.1:
        return None
    if style < 0.15:
        return rng.choice(("unknown", "X"))
    return rng.choice(_GENDER[gender])
