"""Identity rules on an in-memory repository: normalization, validation, resolution, stitching and merges."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from services.identity import matching
from services.identity.matching import BUILT_IN_TYPES, IdentityType
from services.identity.model import Config
from services.identity.resolution import (
    Owner,
    Snapshot,
    StoredRecord,
    contested,
    lookup_resolutions,
    plan_resolution,
    stored_whatever_matches,
)
from services.identity.service import IdentityService
from services.identity.subjects import validate_subjects
from shared.errors import InvalidArgument, NotFound
from tests.unit.identity.fakes import FakeRepository

T = "tenant_a"
CONFIG = Config({**BUILT_IN_TYPES, "crm_key": IdentityType("crm_key", True, "TRIM"),
                 "a" * 64: IdentityType("a" * 64, True, "TRIM")}, matching.DEFAULT_RULESET)


@pytest.fixture
def repo() -> FakeRepository:
    return FakeRepository()


@pytest.fixture
def service(repo) -> IdentityService:
    return IdentityService(repo)


async def resolve_one(service, *identities, tenant=T, lookup_only=False):
    [resolution] = await service.resolve(tenant, [list(identities)], lookup_only=lookup_only)
    return resolution


def paths(error: InvalidArgument) -> list[str]:
    return [field for field, _ in error.violations]


def keys_of(subjects):
    return [s.unique + s.shared for s in validate_subjects(subjects, CONFIG, "US")]


def normalize(id_type: str, value: str) -> str:
    return matching.normalize_value(CONFIG.types[id_type], value, "US")


# Normalization


def test_email_is_trimmed_and_lowercased():
    assert normalize("email", "  Ada.Lovelace@Example.COM \n") == "ada.lovelace@example.com"


def test_phone_is_normalized_to_e164_with_the_default_region():
    assert normalize("phone", " +44 (20) 7946-0958 ") == "+442079460958"
    assert normalize("phone", "(202) 555-0100") == "+12025550100"
    assert matching.normalize_value(BUILT_IN_TYPES["phone"], "020 7946 0958", "GB") == "+442079460958"


def test_a_phone_type_can_carry_its_own_default_region():
    uk = IdentityType("phone", True, "PHONE", "GB")
    assert matching.normalize_value(uk, "020 7946 0958", "US") == "+442079460958"


def test_other_types_are_only_trimmed():
    assert normalize("device_id", "  AbC-123 ") == "AbC-123"


def test_identities_equal_after_normalization_count_once():
    [keys] = keys_of([[("email", "A@x.io"), ("email", " a@X.io"), ("device_id", "d1")]])
    assert keys == [("email", "a@x.io"), ("device_id", "d1")]


# Validation


def test_no_subjects_is_refused():
    with pytest.raises(InvalidArgument) as info:
        keys_of([])
    assert paths(info.value) == ["subjects"]


def test_more_than_a_thousand_subjects_is_refused():
    with pytest.raises(InvalidArgument) as info:
        keys_of([[("email", f"{i}@x.io")] for i in range(1001)])
    assert paths(info.value) == ["subjects"]


def test_a_thousand_subjects_are_accepted():
    assert len(keys_of([[("email", f"{i}@x.io")] for i in range(1000)])) == 1000


def test_every_bad_field_gets_its_own_violation_path():
    subjects = [
        [("email", "ok@x.io")],
        [],
        [("email", "fine@x.io"), ("Email", "x@y.io"), ("device_id", "   ")],
        [("phone", "call me"), ("crm_key", "v" * 513), ("1type", "v"), ("", "v")],
        [("a" * 65, "v"), ("customer_id", "nul\x00byte"), ("loyalty_no", "v")],
    ]
    with pytest.raises(InvalidArgument) as info:
        keys_of(subjects)
    assert paths(info.value) == [
        "subjects[1].identities",
        "subjects[2].identities[1].type",
        "subjects[2].identities[2].value",
        "subjects[3].identities[0].value",
        "subjects[3].identities[1].value",
        "subjects[3].identities[2].type",
        "subjects[3].identities[3].type",
        "subjects[4].identities[0].type",
        "subjects[4].identities[1].value",
        "subjects[4].identities[2].type",
    ]


def test_unknown_identity_type_names_the_fix():
    with pytest.raises(InvalidArgument) as info:
        keys_of([[("loyalty_no", "v")]])
    assert "UpsertIdentityType" in info.value.violations[0][1]


def test_bad_attributes_get_their_own_violation_paths():
    with pytest.raises(InvalidArgument) as info:
        validate_subjects([[("email", "a@x.io")]], CONFIG, "US",
                          [{"first_name": {"nested": 1}, "last_name": "x" * 513, "city": "ok"}])
    assert paths(info.value) == ["subjects[0].attributes.first_name", "subjects[0].attributes.last_name"]


def test_value_length_is_measured_after_normalization():
    [keys] = keys_of([[("crm_key", "  " + "v" * 512 + "  ")]])
    assert keys == [("crm_key", "v" * 512)]


def test_longest_allowed_type_name_is_accepted():
    [keys] = keys_of([[("a" * 64, "v")]])
    assert keys == [("a" * 64, "v")]


async def test_bad_input_stores_nothing_even_for_the_valid_subjects(service, repo):
    with pytest.raises(InvalidArgument):
        await service.resolve(T, [[("email", "good@x.io")], [("email", "  ")]], lookup_only=False)
    assert repo.count(T) == (0, 0)


# Resolution


async def test_unknown_subject_creates_an_individual(service, repo):
    resolution = await resolve_one(service, ("email", "Ada@x.io"))
    assert resolution.created
    assert re.fullmatch(r"ind_[0-9a-f]{32}", resolution.individual_id)
    assert resolution.merged_ids == ()
    assert repo.identities[(T, "email", "ada@x.io")] == resolution.individual_id


async def test_known_subject_resolves_with_one_read_and_no_write(service, repo):
    first = await resolve_one(service, ("email", "ada@x.io"))
    writes_before = repo.resolve_calls
    again = await resolve_one(service, ("email", " ADA@x.io"))
    assert again.individual_id == first.individual_id
    assert not again.created
    assert repo.resolve_calls == writes_before


async def test_new_identities_are_attached_to_the_known_individual(service, repo):
    first = await resolve_one(service, ("email", "ada@x.io"))
    second = await resolve_one(service, ("email", "ada@x.io"), ("phone", "+1 202 555 0100"))
    assert second.individual_id == first.individual_id and not second.created
    assert repo.identities[(T, "phone", "+12025550100")] == first.individual_id
    assert repo.count(T) == (1, 2)


async def test_anonymous_device_is_stitched_to_the_login_email(service):
    device = await resolve_one(service, ("device_id", "dev-1"))
    login = await resolve_one(service, ("device_id", "dev-1"), ("email", "ada@x.io"))
    later = await resolve_one(service, ("email", "ada@x.io"))
    assert device.individual_id == login.individual_id == later.individual_id


async def test_merge_keeps_the_oldest_individual_and_records_the_evidence(service, repo):
    old = await resolve_one(service, ("email", "ada@x.io"))
    young = await resolve_one(service, ("device_id", "dev-1"))
    merged = await resolve_one(service, ("device_id", "dev-1"), ("email", "ada@x.io"), ("phone", "202-555-0100"))
    assert merged.individual_id == old.individual_id
    assert merged.merged_ids == (young.individual_id,)
    assert repo.identities[(T, "device_id", "dev-1")] == old.individual_id
    assert repo.identities[(T, "phone", "+12025550100")] == old.individual_id
    [(tenant, record)] = repo.merges
    assert (tenant, record.survivor_id, record.merged_id, record.rule) == (
        T, old.individual_id, young.individual_id, "unique_identity")
    assert set(record.evidence) == {("device_id", "dev-1"), ("email", "ada@x.io")}


async def test_merged_id_still_resolves_to_the_survivor(service):
    old = await resolve_one(service, ("email", "ada@x.io"))
    young = await resolve_one(service, ("device_id", "dev-1"))
    await resolve_one(service, ("device_id", "dev-1"), ("email", "ada@x.io"))
    found = await service.get_individual(T, young.individual_id)
    assert found.individual_id == old.individual_id
    assert found.alias_ids == [young.individual_id]
    assert set(found.identities) == {("email", "ada@x.io"), ("device_id", "dev-1")}


async def test_alias_chains_are_flattened_to_the_final_survivor(service, repo):
    oldest = await resolve_one(service, ("email", "a@x.io"))
    middle = await resolve_one(service, ("email", "b@x.io"))
    youngest = await resolve_one(service, ("email", "c@x.io"))
    await resolve_one(service, ("email", "b@x.io"), ("email", "c@x.io"))
    assert repo.individuals[(T, youngest.individual_id)].merged_into == middle.individual_id
    await resolve_one(service, ("email", "a@x.io"), ("email", "c@x.io"))
    assert repo.individuals[(T, youngest.individual_id)].merged_into == oldest.individual_id
    assert repo.individuals[(T, middle.individual_id)].merged_into == oldest.individual_id
    found = await service.get_individual(T, youngest.individual_id)
    assert found.individual_id == oldest.individual_id
    assert sorted(found.alias_ids) == sorted([middle.individual_id, youngest.individual_id])


async def test_three_individuals_merge_into_the_oldest_at_once(service, repo):
    ids = [(await resolve_one(service, ("email", f"{n}@x.io"))).individual_id for n in "abc"]
    merged = await resolve_one(service, ("email", "c@x.io"), ("email", "b@x.io"), ("email", "a@x.io"))
    assert merged.individual_id == ids[0]
    assert sorted(merged.merged_ids) == sorted(ids[1:])
    assert len(repo.merges) == 2


async def test_subjects_of_one_batch_see_each_other_and_report_the_final_survivor(service, repo):
    resolutions = await service.resolve(
        T,
        [[("device_id", "d1")], [("email", "ada@x.io")], [("device_id", "d1"), ("email", "ada@x.io")]],
        lookup_only=False,
    )
    survivor = resolutions[0].individual_id
    assert [r.individual_id for r in resolutions] == [survivor] * 3
    assert [r.created for r in resolutions] == [True, True, True]
    assert len(resolutions[2].merged_ids) == 1
    assert repo.count(T) == (2, 2)
    merged_id = resolutions[2].merged_ids[0]
    assert repo.individuals[(T, merged_id)].merged_into == survivor


async def test_the_same_identity_twice_in_a_batch_creates_one_individual(service, repo):
    first, second = await service.resolve(T, [[("email", "ada@x.io")], [("email", "ADA@x.io")]], lookup_only=False)
    assert first.individual_id == second.individual_id
    assert repo.count(T) == (1, 1)


def test_equal_creation_times_are_broken_by_the_smaller_id():
    at = datetime(2026, 1, 1, tzinfo=UTC)
    owners = {("email", "a@x.io"): Owner("ind_b", at), ("email", "b@x.io"): Owner("ind_a", at)}
    subjects = validate_subjects([[("email", "a@x.io"), ("email", "b@x.io")]], CONFIG, "US")
    plan = plan_resolution(subjects, Snapshot(owners=owners), at, CONFIG.ruleset, lookup_only=False)
    assert plan.resolutions[0].individual_id == "ind_a"
    assert plan.redirects == {"ind_b": "ind_a"}


def test_a_lookup_resolves_as_the_plan_would_without_writing():
    at = datetime(2026, 1, 1, tzinfo=UTC)
    owners = {("email", "a@x.io"): Owner("ind_b", at), ("email", "b@x.io"): Owner("ind_a", at),
              ("email", "c@x.io"): Owner("ind_c", at - timedelta(days=1))}
    subjects = validate_subjects([[("email", "a@x.io"), ("email", "b@x.io")], [("email", "nobody@x.io")],
                                  [("email", "a@x.io"), ("email", "c@x.io")], [("email", "a@x.io")]], CONFIG, "US")
    survivors = {key: owner.individual_id for key, owner in owners.items()}
    assert contested(subjects, survivors) == ["ind_a", "ind_b", "ind_c"]  # the first and third subjects' owners
    created = {o.individual_id: o.created_at for o in owners.values()}
    found = lookup_resolutions(subjects, survivors, created)
    assert [r.individual_id for r in found] == ["ind_a", "", "ind_c", "ind_b"]
    assert found == plan_resolution(subjects, Snapshot(owners=owners), at, CONFIG.ruleset, lookup_only=True).resolutions
    # An owner erased between the survivors' read and the creation times' owns nothing, wherever it comes.
    for gone in ("ind_a", "ind_b"):
        left = lookup_resolutions(subjects[:1], survivors, {i: t for i, t in created.items() if i != gone})
        assert [r.individual_id for r in left] == [{"ind_a": "ind_b", "ind_b": "ind_a"}[gone]]


def test_the_records_stored_whatever_matches_are_stored_by_the_plan_with_the_same_rows():
    at = datetime(2026, 1, 1, tzinfo=UTC)
    config = Config({**CONFIG.types, "ip": IdentityType("ip", False, "TRIM")}, CONFIG.ruleset)
    raw = [
        ([("email", "owned@x.io")], {"first_name": "Ada"}),  # every key owned: maybe known
        ([("email", "new@x.io"), ("email", "owned@x.io")], {"first_name": "Bo"}),  # a key nobody owns: stored
        ([("email", "new@x.io")], {"first_name": "Cy"}),  # its key an earlier subject's: not foreseen
        ([("ip", "1.2.3.4")], {"first_name": "Di"}),  # no unique identity: stored
        ([("ip", "1.2.3.4")], {"first_name": "Di"}),  # the same record again: known by then
        ([("device_id", "d1")], {"first_name": "Ed"}),  # its record a stored candidate: known
        ([("device_id", "d2")], {"first_name": "Fa"}),  # a known record: known
        ([("device_id", "d3"), ("email", "other@x.io")], {"first_name": "Ha"}),  # both keys new: stored
    ]
    subjects = validate_subjects([ids for ids, _ in raw], config, "US", [attrs for _, attrs in raw])
    owner = Owner("ind_a", at, 1)
    snap = Snapshot(owners={("email", "owned@x.io"): owner},
                    known_records={subjects[6].record_id: owner},
                    candidates=[StoredRecord(subjects[5].record_id, owner, subjects[5].record, ())])
    early = stored_whatever_matches(subjects, snap)
    assert [r.record_id for r in early] == [subjects[n].record_id for n in (1, 3, 7)]
    plan = plan_resolution(subjects, snap, at, config.ruleset, lookup_only=False)
    stored = {r.record_id: (r.shared, r.blocks) for r in plan.new_records}
    assert all(stored[r.record_id] == (r.shared, r.blocks) for r in early)
    # 0 (no stored record of its owner holds it) and 2 are stored too, unforeseen: they go in the rest of the write
    assert set(stored) == {subjects[n].record_id for n in (0, 1, 2, 3, 7)}
    assert stored[subjects[3].record_id][0] == (("ip", "1.2.3.4"),)


# lookup_only


async def test_lookup_only_returns_an_empty_id_and_creates_nothing(service, repo):
    resolution = await resolve_one(service, ("email", "nobody@x.io"), lookup_only=True)
    assert resolution.individual_id == "" and not resolution.created
    assert repo.count(T) == (0, 0)
    assert (repo.lookup_calls, repo.resolve_calls) == (1, 0)


async def test_lookup_only_finds_a_known_individual_without_attaching(service, repo):
    known = await resolve_one(service, ("email", "ada@x.io"))
    found = await resolve_one(service, ("email", "ada@x.io"), ("phone", "202 555 0100"), lookup_only=True)
    assert found.individual_id == known.individual_id
    assert repo.count(T) == (1, 1)


async def test_lookup_only_does_not_merge_but_names_the_would_be_survivor(service, repo):
    old = await resolve_one(service, ("email", "ada@x.io"))
    await resolve_one(service, ("device_id", "dev-1"))
    found = await resolve_one(service, ("device_id", "dev-1"), ("email", "ada@x.io"), lookup_only=True)
    assert found.individual_id == old.individual_id and found.merged_ids == ()
    assert repo.merges == []


# Tenancy and GetIndividual


async def test_the_same_email_in_two_tenants_is_two_individuals(service):
    a = await resolve_one(service, ("email", "ada@x.io"), tenant="t1")
    b = await resolve_one(service, ("email", "ada@x.io"), tenant="t2")
    assert a.individual_id != b.individual_id and a.created and b.created


async def test_get_individual_with_an_empty_id_is_invalid(service):
    with pytest.raises(InvalidArgument) as info:
        await service.get_individual(T, "")
    assert paths(info.value) == ["unified_individual_id"]


async def test_get_individual_of_an_unknown_id_is_not_found(service):
    with pytest.raises(NotFound) as info:
        await service.get_individual(T, "ind_missing")
    assert info.value.reason == "INDIVIDUAL_NOT_FOUND"


async def test_get_individual_does_not_cross_tenants(service):
    known = await resolve_one(service, ("email", "ada@x.io"), tenant="t1")
    with pytest.raises(NotFound):
        await service.get_individual("t2", known.individual_id)


async def test_merges_wait_in_the_outbox_until_marked_propagated():
    from services.identity.service import IdentityService
    from tests.unit.identity.fakes import FakeRepository

    service = IdentityService(FakeRepository())
    await service.resolve("t", [[("email", "a@x.io")]], lookup_only=False)
    await service.resolve("t", [[("device_id", "d1")]], lookup_only=False)
    await service.resolve("t", [[("email", "a@x.io"), ("device_id", "d1")]], lookup_only=False)
    pending = await service.unpropagated_merge_events("t", 0, 0)
    assert [e.kind for e in pending] == ["MERGE"]
    assert await service.mark_merge_events_propagated("t", [str(pending[0].event_id)]) == 1
    assert await service.unpropagated_merge_events("t", 0, 0) == []
    with pytest.raises(InvalidArgument) as info:
        await service.mark_merge_events_propagated("t", ["x"])
    assert info.value.violations[0][0] == "event_ids[0]"
