"""The compact member store: rows come back exactly as stored, whatever form they were packed in."""

from __future__ import annotations

import pytest
from sandbox_support import sha256

from airflow_provider_fbca.sandbox.members import MemberStore

SCHEMA = ("EXTERN_ID", "EMAIL", "PHONE", "FN", "MADID")


def test_rows_round_trip_in_binary_and_text_form() -> None:
    packed = ["c-1", sha256("a@example.com"), "", sha256("ann"), "ab-12"]
    with_separators = ["c-2\x1fx\x1ey", sha256("b@example.com"), sha256("15551234567"), "", "\x1f"]
    store = MemberStore()
    assert store.add(SCHEMA, [packed, with_separators], [True, False], [5, -1]) == 2
    assert store.add(SCHEMA, [packed], None) == 0, "the same row packs to the same bytes"
    assert store.add_rows(SCHEMA, [with_separators]) == 0
    assert list(store.rows()) == [
        dict(zip(SCHEMA, packed, strict=True)),
        dict(zip(SCHEMA, with_separators, strict=True)),
    ]
    copy = MemberStore()
    for schema, rows, people in store.groups():
        copy.add_rows(schema, rows, people)
    assert list(copy.rows()) == list(store.rows())
    assert copy.matched_people() == store.matched_people() == 1


def test_binary_form_halves_the_digests() -> None:
    store = MemberStore()
    store.add(("EMAIL", "PHONE"), [[sha256("a"), sha256("b")]])
    [member] = store._members
    assert len(member) < 2 * 32 + 10


def test_schemas_without_hashed_or_without_plain_keys() -> None:
    store = MemberStore()
    store.add(("EXTERN_ID",), [["x"], [""]])
    store.add(("EMAIL",), [[sha256("a")], [""]])
    assert list(store.rows()) == [
        {"EXTERN_ID": "x"},
        {"EXTERN_ID": ""},
        {"EMAIL": sha256("a")},
        {"EMAIL": ""},
    ]


def test_removal_by_any_shared_strong_identifier_in_either_form() -> None:
    store = MemberStore()
    rows = [[f"c-{n}", sha256(f"{n}@example.com"), "", sha256("ann"), f"madid-{n}"] for n in range(5)]
    store.add(SCHEMA, rows)
    store.add(SCHEMA, [["c-9", "not-a-hash", "", "", ""]], [False])
    assert store.remove(("EMAIL",), [[sha256("1@example.com")]]) == 1
    assert store.remove(("MADID",), [["madid-2"]]) == 1
    assert store.remove(("EXTERN_ID", "FN"), [["c-9", sha256("ann")]]) == 1, "FN is weak: only c-9 goes"
    assert store.remove(("FN",), [[sha256("ann")]]) == 0
    assert [m["EXTERN_ID"] for m in store.rows()] == ["c-0", "c-3", "c-4"]
    assert store.remove(("EXTERN_ID",), [["c-0"], ["c-0"], ["c-404"]]) == 1
    assert len(store) == 2


def test_members_sharing_an_identifier_are_all_removed() -> None:
    store = MemberStore()
    shared = sha256("family@example.com")
    store.add(("EXTERN_ID", "EMAIL"), [["a", shared], ["b", shared]])
    store.add(("EXTERN_ID", "EMAIL"), [["c", shared]])
    assert store.remove(("EMAIL",), [[shared]]) == 3
    assert len(store) == 0


def test_a_batch_mixing_stored_repeated_and_new_rows_stores_each_new_member_once() -> None:
    store = MemberStore()
    schema = ("EXTERN_ID", "EMAIL")
    first = [["a", sha256("a")], ["b", sha256("b")]]
    assert store.add(schema, first, None, [1, -1]) == 2
    batch = [["b", sha256("b")], ["c", sha256("c")], ["c", sha256("c")], ["d", ""]]
    assert store.add(schema, batch, None, [-1, 2, 2, 3]) == 2, "b is stored, c comes twice"
    assert [row["EXTERN_ID"] for row in store.rows()] == ["a", "b", "c", "d"]
    assert store.matched_people() == 3
    assert store.remove(("EMAIL",), [[sha256("c")]]) == 1
    assert store.remove(("EXTERN_ID",), [["d"]]) == 1, "a member with an empty e-mail is found by its id"
    assert store.remove(("EMAIL",), [[""]]) == 0, "an empty value finds nobody"
    assert [row["EXTERN_ID"] for row in store.rows()] == ["a", "b"]


def test_rows_with_and_without_every_digest_pack_to_what_they_hold() -> None:
    """A batch whose every hashed value is present shares one presence pattern; one with a blank does not."""
    schema = ("EXTERN_ID", "EMAIL", "PHONE", "MADID")
    full = [["a", sha256("a"), sha256("1"), "m-a"], ["b", sha256("b"), sha256("2"), "m-b"]]
    gaps = [["c", "", sha256("3"), "m-c"], ["d", sha256("d"), "", ""]]
    store = MemberStore()
    store.add(schema, full)
    store.add(schema, gaps)
    store.add(("EMAIL",), [[sha256("e")]])
    store.add(("EXTERN_ID",), [["f"]])
    assert list(store.rows()) == [
        *(dict(zip(schema, row, strict=True)) for row in full + gaps),
        {"EMAIL": sha256("e")},
        {"EXTERN_ID": "f"},
    ]
    assert store.add(schema, [full[1], gaps[0]], [True, True]) == 0, "packed alone, the same bytes"


def test_removals_find_members_added_before_and_after_the_index_was_last_read() -> None:
    store = MemberStore()
    schema = ("EXTERN_ID", "EMAIL")
    shared = sha256("family@example.com")
    store.add(schema, [["a", shared], ["b", sha256("b")]])
    assert store.remove(("EXTERN_ID",), [["b"]]) == 1  # reads the index: a and b are in it
    store.add(schema, [["c", shared], ["d", sha256("d")]])  # after the read: not in it yet
    store.add(schema, [["e", shared]])
    assert len(store.find(("EMAIL",), [[shared]])) == 3, "finding changes nothing"
    assert store.remove(("EMAIL",), [[shared]]) == 3, "a from before the read, c and e from after"
    assert store.remove(("EXTERN_ID",), [["d"], ["a"]]) == 1
    assert len(store) == 0


def test_removals_unindex_every_identifier_of_what_they_delete_in_any_form() -> None:
    """A removal found through one identifier forgets the member's others too, whether the member was
    packed with every digest, packed with a gap, or stored as text; identifiers shared inside one batch
    index every member that holds them."""
    store = MemberStore()
    shared = sha256("family@example.com")
    batch = [["a", shared, "", "", "m-a"], ["b", shared, "", "", ""], ["c", "", sha256("1"), "", "m-c"]]
    store.add(SCHEMA, batch)
    store.add(SCHEMA, [["d\x1f", sha256("d@example.com"), "", "", "m-d"]], [False])
    assert set(store.find(("EMAIL",), [[shared]])) == set(store.find(("EXTERN_ID",), [["a"], ["b"]]))
    assert store.remove(("MADID",), [["m-a"], ["m-c"], ["m-d"]]) == 3
    assert [row["EXTERN_ID"] for row in store.rows()] == ["b"]
    assert store.find(("EXTERN_ID", "PHONE"), [["a", sha256("1")], ["c", ""], ["d\x1f", ""]]) == {}
    assert store.remove(("EMAIL",), [[shared]]) == 1
    assert len(store) == 0
    assert store._index == {}, "no identifier of a deleted member stays indexed"


def _general_path(store: MemberStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "_find_own_members", lambda layout, rows: None)


def _state(store: MemberStore) -> tuple[object, ...]:
    return list(store.rows()), store._index, store._person, store._people


@pytest.mark.parametrize(
    ("removal", "bulk"),
    [
        pytest.param([0, 1], True, id="exactly-what-was-added"),
        pytest.param([1, 1, 0], True, id="repeated-rows"),
        pytest.param([0, 3], False, id="a-row-sharing-an-e-mail-with-another-member"),
        pytest.param([1, 4], False, id="a-member-stored-as-text"),
        pytest.param([0, 5], False, id="a-row-never-added"),
        pytest.param([1, 6], False, id="a-row-with-an-empty-identifier"),
    ],
)
def test_bulk_removal_finds_and_deletes_what_the_general_path_does(
    removal: list[int], bulk: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A removal batch of rows identical to members is found and unindexed in bulk; any other batch goes
    the general way. Both end with the same members, index and people, row for row."""
    schema = ("EXTERN_ID", "EMAIL")
    shared = sha256("family@example.com")
    rows = [
        ["a", sha256("a")],
        ["b", sha256("b")],
        ["c", shared],
        ["d", shared],  # 3: shares c's e-mail
        ["e\x1f", sha256("e")],  # 4: stored as text
        ["f", sha256("f")],  # 5: never added
        ["", sha256("g")],  # 6: no EXTERN_ID
    ]
    stored = [0, 1, 2, 3, 4, 6]
    results = []
    for general in (False, True):
        store = MemberStore()
        store.add(schema, [rows[n] for n in stored], [n != 4 for n in stored], [10 + n for n in stored])
        batch = [rows[n] for n in removal]
        if general:
            _general_path(store, monkeypatch)
        elif 4 not in removal:
            assert (store._find_own_members(store._layout(schema), batch) is not None) == bulk
        found = store.find(schema, batch, [n != 4 for n in removal])
        assert store.delete(found) == len(found)
        results.append((sorted((member, sorted(tokens)) for member, tokens in found.items()), _state(store)))
    assert results[0] == results[1]
    bulk_found = results[0][0]
    assert len(bulk_found) == len({n for n in removal if n in stored}) + (2 in removal or 3 in removal)


def test_bulk_removal_deletes_a_member_sharing_an_identifier_with_another() -> None:
    """Removing one of two members sharing an e-mail, with the very row it was added with, removes both
    (Meta deletes every member holding the identifier): the bulk check sees the other member listed."""
    schema = ("EXTERN_ID", "EMAIL")
    shared = sha256("family@example.com")
    store = MemberStore()
    store.add(schema, [["a", shared], ["b", shared], ["c", sha256("c")]], None, [1, 2, 3])
    assert store.remove(schema, [["a", shared]]) == 2
    assert [row["EXTERN_ID"] for row in store.rows()] == ["c"]
    assert store.matched_people() == 1
    assert store.remove(schema, [["c", sha256("c")]]) == 1
    assert store._index == {} and store._people == {} and len(store) == 0


def test_each_new_member_keeps_the_person_of_its_first_matched_row() -> None:
    """Row by row, as a loop would: a new member takes the person of the first of its rows that matched
    anyone; a member stored before keeps its own; an unmatched row gives nobody."""
    schema = ("EXTERN_ID", "EMAIL")
    store = MemberStore()
    store.add(schema, [["old", sha256("old")]], None, [7])
    rows = [
        ["old", sha256("old")],  # stored before with person 7: keeps it
        ["a", sha256("a")],  # first unmatched, then matched twice: the first match (3) wins
        ["b", sha256("b")],
        ["a", sha256("a")],
        ["a", sha256("a")],
        ["c", sha256("c")],  # matches the same person as b: one person, two members
        ["d", sha256("d")],  # never matched
    ]
    people = [9, -1, 4, 3, 5, 4, -1]
    assert store.add(schema, rows, None, people) == 4
    by_id = {row["EXTERN_ID"]: member for row, member in zip(store.rows(), store._members, strict=True)}
    assert {key: store._person.get(member) for key, member in by_id.items()} == {
        "old": 7,
        "a": 3,
        "b": 4,
        "c": 4,
        "d": None,
    }
    assert store._people == {7: 1, 3: 1, 4: 2} and store.matched_people() == 3
    assert store.remove(schema, [["b", sha256("b")]]) == 1
    assert store._people == {7: 1, 3: 1, 4: 1}
    assert store.remove(schema, [["c", sha256("c")], ["a", sha256("a")]]) == 2
    assert store._people == {7: 1} and store.matched_people() == 1
