"""The synthetic people uploads are matched against, and customers drawn from them.

The population is deterministic from ``(size, seed)``: person ``i`` is derived from a keyed hash of
``i``, so nothing random is stored and any person can be rebuilt on demand. Each person is held in
Meta's normalized form, and the match index holds, for each rule of :data:`MATCH_RULES`, the person a
combination of identifiers belongs to (hashed keys as SHA-256 digests of the normalized value, MADID as
lowercase text). An uploaded row matches the first person one of its rules finds; a client that
normalizes a city or a birth date differently from Meta loses that rule's match, as at Meta.
EXTERN_ID matches only through :class:`ExternIds`: an id uploaded on a row that matched someone.

:func:`generate_customers` renders people the way warehouses hold them; see :mod:`.customers`.
"""

from __future__ import annotations

import hashlib
import threading
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from functools import cached_property, lru_cache
from itertools import repeat
from operator import itemgetter


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

# The combinations of keys a row is matched on, tried in this order. Meta matches on each strong key
# alone and on names with place or birth date ("multi-key matching"); it does not publish its exact
# combinations, so these are the sandbox's choice among the keys its customer-file guide lists.
MATCH_RULES: tuple[tuple[str, ...], ...] = (
    ("EMAIL",),
    ("PHONE",),
    ("MADID",),
    ("FN", "LN", "ZIP"),
    ("FN", "LN", "CT", "ST"),
    ("FN", "LN", "COUNTRY", "DOBY", "DOBM", "DOBD"),
    ("FN", "LN", "GEN", "DOBY", "DOBM", "DOBD"),
)
NO_MATCH = -1


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

    @property
    def madid(self) -> str:
        """The person's mobile advertiser id, lowercase with hyphens as Meta matches it (never hashed)."""
        return str(uuid.UUID(bytes=hashlib.blake2b(f"madid:{self.email}".encode(), digest_size=16).digest()))

    def normalized(self) -> dict[str, str]:
        """Every match key's value in Meta's normalized form (before hashing)."""
        birth = self.birth_date
        return {
            "EMAIL": self.email,
            "PHONE": self.phone,
            "MADID": self.madid,
            "FN": normalize_name(self.first_name),
            "LN": normalize_name(self.last_name),
            "ZIP": self.normalized_zip,
            "CT": normalize_name(self.city),
            "ST": (self.state_code or normalize_name(self.state_name)).lower(),
            "COUNTRY": self.country,
            "DOBY": f"{birth.year:04d}",
            "DOBM": f"{birth.month:02d}",
            "DOBD": f"{birth.day:02d}",
            "GEN": self.gender,
        }

    def match_keys(self) -> tuple[object, ...]:
        """Per rule of :data:`MATCH_RULES`, the key the row of this person is found by."""
        values = self.normalized()
        wire = {key: value if key == "MADID" else _hashed(value) for key, value in values.items()}
        return tuple(_rule_key(tuple(wire[key] for key in rule)) for rule in MATCH_RULES)


def sha256(text: str) -> str:
    """
    Return the SHA-256 of a text's UTF-8 bytes, lowercase hex (Meta's hashing).

    :param text: the normalized value.
    """
    return hashlib.sha256(text.encode()).hexdigest()


@lru_cache(maxsize=65536)
def _hashed(value: str) -> str:
    return sha256(value)


def _rule_key(values: tuple[str, ...]) -> object:
    """A rule's lookup key: the value itself for a one-key rule, else the tuple (as ``itemgetter`` gives)."""
    return values[0] if len(values) == 1 else values


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

    _indexes: dict[tuple[int, int], tuple[dict[int, int], ...]] = {}
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
    def _index(self) -> tuple[dict[int, int], ...]:
        """Per rule, the hash of a person's key -> the person's number (hashes keep the index small)."""
        key = (self.size, self.seed)
        with self._lock:
            index = self._indexes.get(key)
            if index is None:
                index = tuple({} for _ in MATCH_RULES)
                for number in range(self.size):
                    for rule_index, rule_key in zip(
                        index, make_person(number, self.seed).match_keys(), strict=True
                    ):
                        rule_index.setdefault(hash(rule_key), number)
                self._indexes[key] = index
            return index

    def warm_up(self) -> None:
        """Build the match index now (it is shared, and otherwise built by the first upload)."""
        _ = self._index

    def contains(self, person: Person) -> bool:
        """
        Tell whether any rule of :data:`MATCH_RULES` finds a person of the population for this person.

        :param person: the person.
        """
        return any(
            hash(rule_key) in rule_index
            for rule_index, rule_key in zip(self._index, person.match_keys(), strict=True)
        )

    def match_rows(
        self, schema: tuple[str, ...], rows: list[list[str]], extern_ids: ExternIds | None = None
    ) -> list[int]:
        """
        Return, per row, the number of the person it matches, or :data:`NO_MATCH`.

        Each rule whose keys are all in the schema is looked up for the whole batch at once (C-level
        maps); a row takes the first rule's hit. With ``extern_ids``, a row's EXTERN_ID is learned when
        the row matched, and an unmatched row is matched through an EXTERN_ID learned before.

        :param schema: the canonical schema.
        :param rows: the rows as lists of text (hashed keys as digests, MADID as text).
        :param extern_ids: the ad account's EXTERN_ID mappings.
        """
        position = {key: i for i, key in enumerate(schema)}
        people = [NO_MATCH] * len(rows)
        unmatched = range(len(rows))
        rules = [
            (rule, rule_index)
            for rule, rule_index in zip(MATCH_RULES, self._index, strict=True)
            if set(rule) <= position.keys()
        ]
        for number, (rule, rule_index) in enumerate(rules, start=1):
            getter: Callable[[list[str]], object] = itemgetter(*(position[key] for key in rule))
            # Each rule looks up only the rows no earlier rule matched (the first rule: every row).
            asked = rows if len(unmatched) == len(rows) else list(map(rows.__getitem__, unmatched))
            found = list(map(rule_index.get, map(hash, map(getter, asked)), repeat(NO_MATCH)))
            hits = len(found) - found.count(NO_MATCH)
            if len(unmatched) == len(rows):
                people = found
            elif hits:
                for row, person in zip(unmatched, found, strict=True):
                    people[row] = person
            if number == len(rules) or hits == len(found):  # no rule left, or no row left to match
                break
            if hits:  # else the same rows are left, and the next rule asks them again
                unmatched = [row for row in unmatched if people[row] == NO_MATCH]
        if extern_ids is not None and "EXTERN_ID" in position:
            extern_ids.link(list(map(itemgetter(position["EXTERN_ID"]), rows)), people)
        return people


class ExternIds:
    """
    An ad account's EXTERN_ID mappings: the person each id was uploaded with (Meta keeps them 90 days).

    :param known: EXTERN_ID -> person number; learned mappings are written into it.
    """

    def __init__(self, known: dict[str, int]) -> None:
        self.known = known

    def link(self, ids: list[str], people: list[int]) -> None:
        """
        Learn the ids of matched rows, and match the other rows through ids learned before (in place).

        :param ids: each row's EXTERN_ID ("" when it has none).
        :param people: each row's person, or :data:`NO_MATCH`; unmatched rows are filled in.
        """
        known = self.known
        if all(ids):  # C-level when every row matched, or none did (then nothing is learned meanwhile)
            if NO_MATCH not in people:
                known.update(zip(ids, people, strict=True))
                return
            if people.count(NO_MATCH) == len(people):
                people[:] = map(known.get, ids, repeat(NO_MATCH))
                return
        for row, (extern_id, person) in enumerate(zip(ids, people, strict=True)):
            if not extern_id:
                continue
            if person != NO_MATCH:
                known[extern_id] = person
            else:
                people[row] = known.get(extern_id, NO_MATCH)
