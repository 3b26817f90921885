"""The synthetic people uploads are matched against, and customers drawn from them.

The population is deterministic from ``(size, seed)``: person ``i`` is derived from a keyed hash of
``i``, so nothing random is stored and any person can be rebuilt on demand. Each person is held in
Meta's normalized form; the match index holds the SHA-256 of their e-mail, their phone, and of their
first name + last name + ZIP. An uploaded row counts as *matched* when its EMAIL, PHONE or MADID, or its
FN + LN + ZIP together, belong to a person (EXTERN_ID never matches: it is the advertiser's own id).

:func:`generate_customers` renders people the way warehouses hold them; see :mod:`.customers`.
"""

from __future__ import annotations

import hashlib
import threading
import unicodedata
from dataclasses import dataclass
from datetime import date
from functools import cached_property, lru_cache
from operator import add, itemgetter


def _words(text: str) -> tuple[str, ...]:
    """The words of a text: the tables below read as prose, not one quoted item a line."""
    return tuple(text.split())


_FEMALE_NAMES = _words(
    """
    Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Lisa Nancy Betty Sandra Ashley
    Emily Olivia Emma Sophia Amelia Grace Chloé Zoë Renée Siân Ana-María Aoife Priya Mei Fatima
    """
)
_MALE_NAMES = _words(
    """
    James Robert John Michael David William Richard Joseph Thomas Charles Daniel Matthew Anthony Mark Steven
    Oliver George Harry Jack Noah José André Björn Seán Jean-Luc Raj Wei Omar Kwame Mateo
    """
)
# (display name, gender)
FIRST_NAMES = tuple((name, "f") for name in _FEMALE_NAMES) + tuple((name, "m") for name in _MALE_NAMES)
# Apostrophes, hyphens and letters beyond ASCII on purpose: Meta's FN/LN rules keep letters of any script.
LAST_NAMES = _words(
    """
    Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Wilson Anderson
    Thomas Taylor Moore Jackson Martin Lee Thompson White Harris Clark Lewis Robinson Walker Young Allen King
    Wright Scott Green Baker Adams Nelson Hill Campbell Mitchell Roberts O'Brien O'Connor D'Angelo Smith-Jones
    MacDonald McKenzie García Müller Nguyen Núñez Łukasik Øvergård Kowalski Patel Chen Evans Hughes Murphy
    Kelly Byrne
    """
)
# (city, state code, state name, first ZIP); several ZIPs start with 0, which warehouses lose.
US_PLACES = (
    ("Menlo Park", "CA", "California", 94025),
    ("San Francisco", "CA", "California", 94102),
    ("Los Angeles", "CA", "California", 90012),
    ("Seattle", "WA", "Washington", 98101),
    ("Portland", "OR", "Oregon", 97201),
    ("Denver", "CO", "Colorado", 80202),
    ("Austin", "TX", "Texas", 78701),
    ("Houston", "TX", "Texas", 77002),
    ("Chicago", "IL", "Illinois", 60601),
    ("New York", "NY", "New York", 10001),
    ("Brooklyn", "NY", "New York", 11201),
    ("Boston", "MA", "Massachusetts", 2108),
    ("Cambridge", "MA", "Massachusetts", 2138),
    ("Providence", "RI", "Rhode Island", 2903),
    ("Hartford", "CT", "Connecticut", 6103),
    ("Newark", "NJ", "New Jersey", 7102),
    ("Portland", "ME", "Maine", 4101),
    ("Burlington", "VT", "Vermont", 5401),
    ("Miami", "FL", "Florida", 33101),
    ("Atlanta", "GA", "Georgia", 30303),
    ("Charlotte", "NC", "North Carolina", 28202),
    ("Washington", "DC", "District of Columbia", 20001),
    ("Minneapolis", "MN", "Minnesota", 55401),
    ("Salt Lake City", "UT", "Utah", 84101),
    ("Phoenix", "AZ", "Arizona", 85003),
    ("Nashville", "TN", "Tennessee", 37203),
    ("New Orleans", "LA", "Louisiana", 70112),
    ("Saint Paul", "MN", "Minnesota", 55101),
    ("Sioux Falls", "SD", "South Dakota", 57104),
    ("Fargo", "ND", "North Dakota", 58102),
)
US_AREA_CODES = _words(
    "650 415 213 206 503 303 512 713 312 212 718 617 401 860 973 207 802 305 404 704 202 612 801 602 615"
)
# (city, region, outward codes of the postcode)
GB_PLACES = (
    ("London", "England", ("SW1A", "EC1A", "W1D", "N1", "SE1", "E14")),
    ("Manchester", "England", ("M1", "M4")),
    ("Leeds", "England", ("LS1", "LS6")),
    ("Bristol", "England", ("BS1", "BS8")),
    ("Edinburgh", "Scotland", ("EH1", "EH3")),
    ("Glasgow", "Scotland", ("G1", "G12")),
    ("Cardiff", "Wales", ("CF10", "CF24")),
    ("Belfast", "Northern Ireland", ("BT1", "BT7")),
)
_INWARD_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"
EMAIL_DOMAINS = ("example.com", "example.org")
OUTSIDER_EMAIL_DOMAIN = "example.net"
# Shares of the population.
GB_SHARE_PERCENT = 20
LONDON_LANDLINE_PERCENT = 30


@dataclass(frozen=True)
class Person:
    """
    One person, with identifiers in Meta's normalized form (and display names for rendering).

    :param index: the person's number in the population (-1 for outsiders).
    :param first_name: display first name (may hold accents, hyphens).
    :param last_name: display last name (may hold accents, apostrophes, hyphens).
    :param gender: ``m`` or ``f``.
    :param country: ``us`` or ``gb``.
    :param email: normalized e-mail.
    :param phone: E.164 digits without ``+``.
    :param city: display city.
    :param state_code: US state code (``CA``) or None.
    :param state_name: US state name or GB nation.
    :param zip_code: the postal code as written (``02108``, ``SW1A 1AA``).
    :param birth_date: date of birth.
    """

    index: int
    first_name: str
    last_name: str
    gender: str
    country: str
    email: str
    phone: str
    city: str
    state_code: str | None
    state_name: str
    zip_code: str
    birth_date: date

    @property
    def normalized_zip(self) -> str:
        """The ZIP as Meta matches it: 5 digits in the US, outward code + sector digit in the UK."""
        if self.country == "gb":
            outward, inward = self.zip_code.lower().split()
            return outward + inward[0]
        return self.zip_code

    def match_keys(self) -> tuple[str, str, str]:
        """The SHA-256 of the e-mail, of the phone, and FN+LN+ZIP hashes concatenated."""
        names = _hashed_name(self.first_name) + _hashed_name(self.last_name)
        return sha256(self.email), sha256(self.phone), names + _hashed_zip(self.normalized_zip)


def sha256(text: str) -> str:
    """
    Return the SHA-256 of a text's UTF-8 bytes, lowercase hex (Meta's hashing).

    :param text: the normalized value.
    """
    return hashlib.sha256(text.encode()).hexdigest()


@lru_cache(maxsize=1024)
def _hashed_name(name: str) -> str:
    return sha256(normalize_name(name))


@lru_cache(maxsize=65536)
def _hashed_zip(zip_code: str) -> str:
    return sha256(zip_code)


@lru_cache(maxsize=1024)
def normalize_name(name: str) -> str:
    """
    Meta's FN/LN rule: NFC, lowercase, letters of any script only.

    :param name: a display name.
    """
    return "".join(ch for ch in unicodedata.normalize("NFC", name).lower() if ch.isalpha())


@lru_cache(maxsize=1024)
def ascii_letters(name: str) -> str:
    """
    Fold a name to ASCII letters, for e-mail addresses (``Zoë O'Brien`` -> ``zoe``, ``obrien``).

    :param name: a display name.
    """
    decomposed = unicodedata.normalize("NFKD", name.replace("Ł", "L").replace("ł", "l").replace("Ø", "O"))
    return "".join(ch for ch in decomposed.lower() if "a" <= ch <= "z")


class _Digits:
    """A stream of pseudo-random choices drawn from one keyed hash (fast, and reproducible)."""

    def __init__(self, key: str) -> None:
        self._value = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=32).digest(), "big")

    def below(self, bound: int) -> int:
        self._value, choice = divmod(self._value, bound)
        return choice


def make_person(index: int, seed: int, *, outsider: bool = False) -> Person:
    """
    Build one person deterministically.

    Outsiders (people *not* in the population) use number ranges and an e-mail domain the population
    never uses, so only their names and ZIP can collide with it (:func:`generate_customers` checks).

    :param index: the person's number.
    :param seed: the population's (or the customer generator's) seed.
    :param outsider: build someone from outside the population.
    """
    digits = _Digits(f"{'outsider' if outsider else 'person'}:{seed}:{index}")
    first_name, gender = FIRST_NAMES[digits.below(len(FIRST_NAMES))]
    last_name = LAST_NAMES[digits.below(len(LAST_NAMES))]
    birth_date = date(1940 + digits.below(66), 1 + digits.below(12), 1 + digits.below(28))
    # Bijective on the index: population people never share a phone number.
    number = (index * 2_654_435_761 + seed) % 4_000_000
    if digits.below(100) < GB_SHARE_PERCENT:
        city, region, outwards = GB_PLACES[digits.below(len(GB_PLACES))]
        inward = f"{digits.below(10)}{_INWARD_LETTERS[digits.below(20)]}{_INWARD_LETTERS[digits.below(20)]}"
        zip_code, state_code, state_name, country = (
            f"{outwards[digits.below(len(outwards))]} {inward}",
            None,
            region,
            "gb",
        )
        if city == "London" and digits.below(100) < LONDON_LANDLINE_PERCENT:
            phone = f"44207{(0 if not outsider else 5) + number // 1_000_000}{number % 1_000_000:06d}"
        else:
            phone = f"4477{(1 if not outsider else 5) + number // 2_000_000}{number % 2_000_000:07d}"
    else:
        city, state_code, state_name, first_zip = US_PLACES[digits.below(len(US_PLACES))]
        zip_code, country = f"{first_zip + digits.below(20):05d}", "us"
        area = US_AREA_CODES[digits.below(len(US_AREA_CODES))]
        exchange = (200 if not outsider else 600) + number // 10_000
        phone = f"1{area}{exchange}{number % 10_000:04d}"
    local = f"{ascii_letters(first_name)}.{ascii_letters(last_name)}{index}"
    domain = OUTSIDER_EMAIL_DOMAIN if outsider else EMAIL_DOMAINS[digits.below(len(EMAIL_DOMAINS))]
    return Person(
        index=-1 if outsider else index,
        first_name=first_name,
        last_name=last_name,
        gender=gender,
        country=country,
        email=f"{local}@{domain}",
        phone=phone,
        city=city,
        state_code=state_code,
        state_name=state_name,
        zip_code=zip_code,
        birth_date=birth_date,
    )


class Population:
    """
    The sandbox's synthetic people and the index uploads are matched against.

    The index is built on first use and shared by every sandbox of the same size and seed.

    :param size: how many people.
    :param seed: the seed they are derived from.
    """

    _indexes: dict[tuple[int, int], tuple[frozenset[str], frozenset[str], frozenset[str]]] = {}
    _lock = threading.Lock()

    def __init__(self, size: int, seed: int) -> None:
        if size < 0:
            raise ValueError("population must be >= 0")
        self.size = size
        self.seed = seed

    def person(self, index: int) -> Person:
        """
        Return person ``index`` (0 <= index < size).

        :param index: the person's number.
        """
        if not 0 <= index < self.size:
            raise IndexError(f"person {index} is outside a population of {self.size}")
        return make_person(index, self.seed)

    @cached_property
    def _index(self) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
        key = (self.size, self.seed)
        with self._lock:
            index = self._indexes.get(key)
            if index is None:
                keys = [make_person(i, self.seed).match_keys() for i in range(self.size)]
                index = (
                    tuple(frozenset(column) for column in zip(*keys, strict=True))
                    if keys
                    else (frozenset(),) * 3
                )
                self._indexes[key] = index  # type: ignore[assignment]
            return index  # type: ignore[return-value]

    def warm_up(self) -> None:
        """Build the match index now (it is shared, and otherwise built by the first upload)."""
        _ = self._index

    def contains(self, person: Person) -> bool:
        """
        Tell whether a person shares an e-mail, a phone, or names + ZIP with the population.

        :param person: the person.
        """
        emails, phones, names = self._index
        email, phone, name_zip = person.match_keys()
        return email in emails or phone in phones or name_zip in names

    def count_matches(self, schema: tuple[str, ...], rows: list[list[str]]) -> int:
        """
        Count the rows that match a person: EMAIL, PHONE, or FN + LN + ZIP (hashed as Meta expects).

        :param schema: the canonical schema.
        :param rows: the rows as lists of text.
        """
        position = {key: i for i, key in enumerate(schema)}
        emails, phones, names = self._index
        columns = []
        if "EMAIL" in position:
            columns.append(map(emails.__contains__, map(itemgetter(position["EMAIL"]), rows)))
        if "PHONE" in position:
            columns.append(map(phones.__contains__, map(itemgetter(position["PHONE"]), rows)))
        if {"FN", "LN", "ZIP"} <= position.keys():
            first, last, zip_code = (map(itemgetter(position[key]), rows) for key in ("FN", "LN", "ZIP"))
            columns.append(map(names.__contains__, map(add, map(add, first, last), zip_code)))
        if not columns:
            return 0
        # One bool per row and column, or-ed row-wise: all in C, no Python loop per row.
        return sum(map(any, zip(*columns, strict=True)))
