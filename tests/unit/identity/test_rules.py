"""Identity types, rulesets, fuzzy matching with blocking, the size guard, re-runs and unmerge planning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.identity import matching
from services.identity.matching import BUILT_IN_TYPES, IdentityType, Record
from services.identity.model import Config, StoredSource
from services.identity.rerun import TenantData, plan_rerun
from services.identity.service import IdentityService, Settings
from services.identity.unmerge import HistoryEvent, UnmergeData, plan_unmerge
from shared.errors import FailedPrecondition, InvalidArgument, NotFound
from tests.unit.identity.fakes import FakeRepository

T = "tenant_r"
AT = datetime(2026, 1, 1, tzinfo=UTC)
NAME_RULES = [("names_and_phone", [("identity", "phone", "EXACT_NORMALIZED", ""),
                                   ("attribute", "first_name", "FUZZY", "HIGH"),
                                   ("attribute", "last_name", "EXACT", "")])]


@pytest.fixture
def repo() -> FakeRepository:
    return FakeRepository()


@pytest.fixture
def service(repo) -> IdentityService:
    return IdentityService(repo, settings=Settings(config_ttl_seconds=0))


def paths(error: InvalidArgument) -> list[str]:
    return [field for field, _ in error.violations]


async def resolve(service, *subjects, attributes=None, tenant=T):
    return await service.resolve(tenant, [list(s) for s in subjects], lookup_only=False, attributes=attributes)


# Matching primitives


def test_fuzzy_thresholds_order_the_precisions():
    crit = {p: matching.Criterion("attribute", "first_name", "FUZZY", p) for p in ("HIGH", "MEDIUM", "LOW")}
    assert matching.criterion_holds(crit["HIGH"], ["jonathan"], ["jonathon"])
    assert not matching.criterion_holds(crit["HIGH"], ["smith"], ["smyth"])
    assert matching.criterion_holds(crit["MEDIUM"], ["smith"], ["smyth"])
    assert not matching.criterion_holds(crit["MEDIUM"], ["kate"], ["katherine"])
    assert matching.criterion_holds(crit["LOW"], ["kate"], ["katherine"])
    assert not matching.criterion_holds(crit["LOW"], ["john"], ["jane"])


def test_blank_values_never_match_not_even_each_other():
    rule = matching.Rule("r", (matching.Criterion("attribute", "last_name", "EXACT"),))
    assert not matching.rule_holds(rule, Record({}, {}), Record({}, {}))
    assert matching.block_keys(matching.Ruleset(1, (rule,)), Record({}, {})) == []


def test_criteria_of_a_rule_are_anded():
    rule = matching.Rule("r", (matching.Criterion("attribute", "last_name", "EXACT"),
                               matching.Criterion("attribute", "first_name", "FUZZY", "HIGH")))
    ada = Record({}, {"first_name": "Ada", "last_name": "Lovelace"})
    assert matching.rule_holds(rule, ada, Record({}, {"first_name": "ada", "last_name": "Lovelace"}))
    assert not matching.rule_holds(rule, ada, Record({}, {"first_name": "Bea", "last_name": "Lovelace"}))


def test_exact_normalized_attributes_ignore_case_accents_and_punctuation():
    crit = matching.Criterion("attribute", "last_name", "EXACT_NORMALIZED")
    left = matching.record_values(Record({}, {"last_name": "  Brontë-Smith "}), crit)
    right = matching.record_values(Record({}, {"last_name": "bronte smith"}), crit)
    assert matching.criterion_holds(crit, left, right)


def test_fuzzy_only_rules_block_on_a_prefix_so_unrelated_names_are_never_compared():
    ruleset = matching.Ruleset(1, (matching.Rule("r", (matching.Criterion("attribute", "last_name", "FUZZY", "LOW"),)),))
    def keys(name):
        return matching.block_keys(ruleset, Record({}, {"last_name": name}))

    assert keys("Lovelace") == keys("Lovelase")
    assert keys("Lovelace") != keys("Babbage")


def test_attribute_only_rulesets_make_their_block_keys_by_the_short_path_exactly_as_the_general_one():
    rules = (
        matching.Rule("names_dob", (matching.Criterion("attribute", "last_name", "EXACT_NORMALIZED"),
                                    matching.Criterion("attribute", "first_name", "EXACT_NORMALIZED"),
                                    matching.Criterion("attribute", "dob", "FUZZY", "HIGH"))),
        matching.Rule("dob_names", (matching.Criterion("attribute", "dob", "EXACT"),
                                    matching.Criterion("attribute", "first_name", "FUZZY", "LOW"))),
        matching.Rule("names_zip", (matching.Criterion("attribute", "first_name", "EXACT_NORMALIZED"),
                                    matching.Criterion("attribute", "last_name", "EXACT_NORMALIZED"),
                                    matching.Criterion("attribute", "zip", "FUZZY", "MEDIUM"))),
        matching.Rule("city", (matching.Criterion("attribute", "city", "FUZZY", "LOW"),)),
    )
    short = matching.Ruleset(3, rules, shared_blocks=True)
    general = matching.Ruleset(3, rules, shared_blocks=True)
    general.__dict__["attribute_blocks"] = None  # (the cached plan of the short path, left out)
    assert short.attribute_blocks is not None
    records = [Record({}, {"first_name": "Zoë", "last_name": "O'Hara", "dob": "1900-01-02", "zip": "AB1",
                           "city": "Đà Nẵng"}),
               Record({}, {"first_name": "ada", "last_name": "LOVELACE", "dob": " 1815-12-10"}),
               Record({}, {"first_name": "Ada", "dob": "1815"}), Record({}, {"city": "\"quoted\""}), Record({}, {})]
    for record in records:
        assert matching.block_keys(short, record) == matching.block_keys(general, Record(record.identities,
                                                                                          record.attributes))
    assert len(matching.block_keys(short, records[0])) == 4 and matching.block_keys(short, records[4]) == []
    # Identity criteria or a probabilistic rule take the general path.
    with_identity = matching.Ruleset(3, rules + (matching.Rule("email", (matching.Criterion("identity", "email",
                                                                                              "EXACT"),)),),
                                     shared_blocks=True)
    assert with_identity.attribute_blocks is None
    assert matching.Ruleset(3, rules).attribute_blocks is None  # one key per rule (older rulesets)


# Ruleset config


async def test_the_default_ruleset_is_active_until_the_tenant_creates_one(service):
    default = await service.get_ruleset(T, 0)
    assert default.version == 0
    assert [r.name for r in default.rules] == ["email", "phone_and_name", "customer_id"]


async def test_rulesets_are_versioned_and_the_latest_is_active(service):
    first = await service.create_ruleset(T, NAME_RULES, [])
    second = await service.create_ruleset(T, [("ids", [("identity", "customer_id", "EXACT", "")])], [])
    assert (first.version, second.version) == (1, 2)
    assert (await service.get_ruleset(T, 0)).rules == second.rules
    assert (await service.get_ruleset(T, 1)).rules == first.rules
    with pytest.raises(NotFound):
        await service.get_ruleset(T, 3)


async def test_bad_rules_get_a_violation_per_field_and_store_nothing(service, repo):
    with pytest.raises(InvalidArgument) as info:
        await service.create_ruleset(T, [
            ("ok", [("attribute", "first_name", "FUZZY", "HIGH")]),
            ("", []),
            ("bad", [("attribute", "shoe_size", "EXACT", ""), ("identity", "loyalty_no", "EXACT", ""),
                     ("attribute", "city", "FUZZY", ""), ("attribute", "city", "EXACT", "HIGH"),
                     ("", "", "", "")]),
        ], ["Bad Name"])
    assert paths(info.value) == [
        "ruleset.custom_attributes[0]",
        "ruleset.rules[1].criteria",
        "ruleset.rules[2].criteria[0].attribute",
        "ruleset.rules[2].criteria[1].identity_type",
        "ruleset.rules[2].criteria[2].precision",
        "ruleset.rules[2].criteria[3].precision",
        "ruleset.rules[2].criteria[4].field",
        "ruleset.rules[2].criteria[4].method",
    ]
    assert repo.rulesets == {}


async def test_custom_attributes_and_custom_types_can_be_referenced(service):
    await service.upsert_identity_type(T, IdentityType("loyalty_no", False, "TRIM_LOWERCASE"))
    stored = await service.create_ruleset(T, [("r", [("attribute", "shoe_size", "EXACT", ""),
                                                     ("identity", "loyalty_no", "EXACT", "")])], ["shoe_size"])
    assert stored.custom_attributes == ("shoe_size",)


# Identity types


async def test_custom_types_are_listed_with_the_built_ins(service):
    await service.upsert_identity_type(T, IdentityType("loyalty_no", False, "TRIM_LOWERCASE"))
    types = {t.name: t for t in await service.list_identity_types(T)}
    assert set(types) == set(BUILT_IN_TYPES) | {"loyalty_no"}
    assert not types["loyalty_no"].unique and not types["loyalty_no"].built_in and types["email"].built_in


async def test_bad_identity_type_gets_violations(service):
    with pytest.raises(InvalidArgument) as info:
        await service.upsert_identity_type(T, IdentityType("Bad", True, "NOPE", "GB"))
    assert paths(info.value) == ["identity_type.name", "identity_type.normalization",
                                 "identity_type.default_region"]


async def test_uniqueness_of_a_type_in_use_cannot_change(service):
    await resolve(service, [("email", "a@x.io")])
    with pytest.raises(FailedPrecondition) as info:
        await service.upsert_identity_type(T, IdentityType("email", False, "EMAIL"))
    assert info.value.reason == "IDENTITY_TYPE_IN_USE"


async def test_identities_of_a_not_unique_type_never_merge_on_their_own(service):
    await service.upsert_identity_type(T, IdentityType("household", False, "TRIM"))
    a, b = await resolve(service, [("email", "a@x.io"), ("household", "h1")], [("email", "b@x.io"), ("household", "h1")])
    assert a.individual_id != b.individual_id
    found = await service.get_individual(T, b.individual_id)
    assert ("household", "h1") in found.identities


# Real-time rule matching


async def test_phone_plus_fuzzy_first_name_plus_exact_last_name_merges(service):
    await service.upsert_identity_type(T, IdentityType("phone", False, "PHONE"))
    a, b = await resolve(service, [("customer_id", "c1"), ("phone", "(202) 555-0100")],
                         [("customer_id", "c2"), ("phone", "+1 202 555 0100")],
                         attributes=[{"first_name": "Jonathan", "last_name": "Smith"},
                                     {"first_name": "Jonathon", "last_name": "Smith"}])
    assert a.individual_id == b.individual_id


async def test_a_rule_does_not_merge_when_one_criterion_fails(service, repo):
    await service.upsert_identity_type(T, IdentityType("phone", False, "PHONE"))
    a, b = await resolve(service, [("customer_id", "c1"), ("phone", "202 555 0100")],
                         [("customer_id", "c2"), ("phone", "202 555 0100")],
                         attributes=[{"first_name": "Jonathan", "last_name": "Smith"},
                                     {"first_name": "Jonathan", "last_name": "Smyth"}])
    assert a.individual_id != b.individual_id


async def test_a_new_record_matching_a_stored_one_joins_its_individual(service, repo):
    await service.create_ruleset(T, [("dob_name", [("attribute", "date_of_birth", "EXACT", ""),
                                                   ("attribute", "last_name", "FUZZY", "MEDIUM")])], [])
    [a] = await resolve(service, [("customer_id", "c1")], attributes=[{"date_of_birth": "1990-01-01", "last_name": "Allen"}])
    [b] = await resolve(service, [("customer_id", "c2")], attributes=[{"date_of_birth": "1990-01-01", "last_name": "Alen"}])
    assert b.individual_id == a.individual_id
    assert repo.merges == []  # c2 was new: it joins a's individual, nothing is merged
    assert (await service.get_individual(T, a.individual_id)).record_count == 2


async def test_blank_attributes_never_merge(service):
    await service.create_ruleset(T, [("last", [("attribute", "last_name", "EXACT", "")])], [])
    a, b = await resolve(service, [("customer_id", "c1")], [("customer_id", "c2")],
                         attributes=[{"last_name": "  "}, {"last_name": ""}])
    assert a.individual_id != b.individual_id


async def test_rules_are_ored(service):
    await service.create_ruleset(T, [("last", [("attribute", "last_name", "EXACT", "")]),
                                     ("city", [("attribute", "city", "EXACT", "")])], [])
    a, b, c = await resolve(service, [("customer_id", "c1")], [("customer_id", "c2")], [("customer_id", "c3")],
                            attributes=[{"last_name": "Lee"}, {"last_name": "Lee", "city": "Leeds"}, {"city": "Leeds"}])
    assert a.individual_id == b.individual_id == c.individual_id


async def test_the_cluster_size_guard_refuses_and_records_the_reason(repo):
    service = IdentityService(repo, settings=Settings(max_cluster=3))
    for i in range(3):
        await resolve(service, [("email", "big@x.io"), ("device_id", f"d{i}")])
    [small] = await resolve(service, [("email", "small@x.io")])
    [both] = await resolve(service, [("email", "small@x.io"), ("email", "big@x.io")])
    refused = [m for _, m in repo.merges if m.kind == "REFUSED"]
    assert len(refused) == 1 and "above the limit of 3" in refused[0].reason
    assert both.merged_ids == ()
    assert (await service.get_individual(T, small.individual_id)).individual_id == small.individual_id


async def test_a_subject_seen_again_is_one_source_record(service, repo):
    attrs = [{"first_name": "Ada"}]
    await resolve(service, [("email", "a@x.io")], attributes=attrs)
    calls = repo.resolve_calls
    await resolve(service, [("email", " A@x.io")], attributes=attrs)
    assert repo.resolve_calls == calls and len(repo.records) == 1


async def test_a_subject_that_a_stored_record_contains_adds_nothing_and_stores_nothing(service, repo):
    [a] = await resolve(service, [("email", "a@x.io"), ("device_id", "d1")],
                        attributes=[{"first_name": "Ada", "last_name": "Lovelace"}])
    calls = repo.resolve_calls
    again = await resolve(service, [("device_id", "d1")], [("device_id", "d1"), ("email", "A@x.io")],
                          attributes=[{"first_name": "Ada"}, {"last_name": "Lovelace", "first_name": "Ada"}])
    assert [r.individual_id for r in again] == [a.individual_id] * 2 and not any(r.created for r in again)
    assert repo.resolve_calls == calls and len(repo.records) == 1


async def test_a_subject_with_a_new_attribute_value_is_a_new_record(service, repo):
    [a] = await resolve(service, [("device_id", "d1")], attributes=[{"first_name": "Ada"}])
    [b] = await resolve(service, [("device_id", "d1")], attributes=[{"first_name": "Ada", "city": "London"}])
    assert b.individual_id == a.individual_id
    assert len(repo.records) == 2
    assert (await service.get_individual(T, a.individual_id)).record_count == 2


async def test_identities_and_attributes_from_two_records_of_one_individual_are_a_new_record(service, repo):
    # The phone is on one record and the names on another: together they can match the phone-and-name rule,
    # so the subject carrying both is stored and matched, and it links the individual of the same person.
    await service.upsert_identity_type(T, IdentityType("phone", False, "PHONE"))
    [a] = await resolve(service, [("device_id", "d1"), ("phone", "202 555 0100")])
    await resolve(service, [("device_id", "d1")], attributes=[{"first_name": "Jonathan", "last_name": "Smith"}])
    [other] = await resolve(service, [("customer_id", "c2"), ("phone", "202 555 0100")],
                            attributes=[{"first_name": "Jonathon", "last_name": "Smith"}])
    assert other.individual_id != a.individual_id
    [both] = await resolve(service, [("device_id", "d1"), ("phone", "202 555 0100")],
                           attributes=[{"first_name": "Jonathan", "last_name": "Smith"}])
    assert both.individual_id == a.individual_id and both.merged_ids == (other.individual_id,)
    assert len(repo.records) == 4


async def test_merge_events_page_newest_first(service):
    for n in range(3):
        await resolve(service, [("email", f"{n}a@x.io")])
        await resolve(service, [("email", f"{n}b@x.io")])
        await resolve(service, [("email", f"{n}a@x.io"), ("email", f"{n}b@x.io")])
    page, token = await service.list_merge_events(T, "", 2, "")
    assert [e.event_id for e in page] == [3, 2] and token
    rest, last = await service.list_merge_events(T, "", 2, token)
    assert [e.event_id for e in rest] == [1] and last == ""
    with pytest.raises(InvalidArgument) as info:  # a token of another individual's history is not this listing's
        await service.list_merge_events(T, "someone", 2, token)
    assert paths(info.value) == ["page_token"]
    with pytest.raises(InvalidArgument) as info:
        await service.list_merge_events(T, "", -1, "x")
    assert paths(info.value) == ["page_size", "page_token"]


# Re-runs


def _config(rules=None) -> Config:
    ruleset = matching.validate_ruleset(rules, [], BUILT_IN_TYPES) if rules else matching.DEFAULT_RULESET
    return Config(dict(BUILT_IN_TYPES), ruleset)


def _source(record_id, individual, minutes, identities=None, **attributes):
    return StoredSource(record_id, individual, Record(identities or {}, attributes), AT + timedelta(minutes=minutes))


def test_a_rerun_keeps_the_ids_of_unchanged_clusters():
    data = TenantData(
        records=[_source("r1", "ind_a", 1, {"email": ["a@x.io"]}), _source("r2", "ind_a", 2, {"device_id": ["d"]}),
                 _source("r3", "ind_b", 3, {"email": ["b@x.io"]})],
        survivors={"ind_a": AT, "ind_b": AT + timedelta(minutes=3)}, aliases={}, separated=set(),
        identity_owners={("email", "a@x.io"): "ind_a", ("device_id", "d"): "ind_a", ("email", "b@x.io"): "ind_b"})
    # r2 carries only the device: without the link that joined it to r1 (a subject seen with both), it is its
    # own cluster in a re-run; r1 keeps ind_a, r3 keeps ind_b, r2 gets a new id.
    plan = plan_rerun(data, _config(), new_id=lambda: "ind_new")
    assert plan.kept_ids == 2 and plan.new_ids == 1
    assert plan.record_owner == {"r2": "ind_new"}


def test_a_rerun_merges_by_rule_into_the_oldest_and_redirects_its_aliases():
    rules = [("last", [("attribute", "last_name", "EXACT", "")])]
    data = TenantData(
        records=[_source("r1", "ind_old", 1, last_name="Lee"), _source("r2", "ind_young", 2, last_name="Lee")],
        survivors={"ind_old": AT, "ind_young": AT + timedelta(minutes=2)}, aliases={"ind_alias": "ind_young"},
        separated=set(), identity_owners={})
    plan = plan_rerun(data, _config(rules))
    assert plan.record_owner == {"r2": "ind_old"}
    assert plan.redirects == {"ind_young": "ind_old", "ind_alias": "ind_old"}
    assert plan.clusters == 1 and plan.new_ids == 0


def test_a_rerun_respects_separations_and_the_size_guard():
    rules = [("last", [("attribute", "last_name", "EXACT", "")])]
    records = [_source(f"r{i}", f"ind_{i}", i, last_name="Lee") for i in range(4)]
    survivors = {f"ind_{i}": AT + timedelta(minutes=i) for i in range(4)}
    separated = TenantData(records, survivors, {}, {frozenset(("ind_0", "ind_1"))}, {})
    plan = plan_rerun(separated, _config(rules))
    assert plan.clusters == 2 and plan.refused >= 1
    guarded = plan_rerun(TenantData(records, survivors, {}, set(), {}), _config(rules), max_cluster=2)
    assert guarded.clusters == 2
    assert any("above the limit of 2" in m.reason for m in guarded.merges if m.kind == "REFUSED")


def test_rerun_comparisons_stay_within_blocks():
    rules = [("last", [("attribute", "last_name", "EXACT", "")])]
    records = [_source(f"r{i}", f"ind_{i}", i, last_name=f"name{i}") for i in range(200)]
    plan = plan_rerun(TenantData(records, {f"ind_{i}": AT for i in range(200)}, {}, set(), {}), _config(rules))
    assert plan.comparisons == 0 and plan.clusters == 200


# Unmerge planning


def test_unmerge_sends_back_what_was_first_seen_with_the_split_individual():
    data = UnmergeData(
        individual_id="ind_young", merged_into="ind_old", aliases={"ind_young": "ind_old", "ind_older_alias": "ind_old",
                                                                  "ind_via_young": "ind_old"},
        history=[HistoryEvent(1, "MERGE", "ind_young", "ind_via_young"), HistoryEvent(2, "MERGE", "ind_old", "ind_young"),
                 HistoryEvent(3, "MERGE", "ind_old", "ind_older_alias")],
        records=[_source("r_old", "ind_old", 1, {"email": ["a@x.io"]}),
                 _source("r_young", "ind_old", 2, {"device_id": ["d1"]}),
                 _source("r_link", "ind_old", 3, {"email": ["a@x.io"], "device_id": ["d1"]}),
                 _source("r_later", "ind_old", 4, {"device_id": ["d1"]}, first_name="Ada")],
        origins={"r_old": "ind_old", "r_young": "ind_young", "r_link": "ind_old", "r_later": "ind_old"},
        identities={("email", "a@x.io"): "ind_old", ("device_id", "d1"): "ind_young"},
    )
    plan = plan_unmerge(data, _config())
    assert plan.members == ["ind_via_young", "ind_young"]
    assert plan.records == ["r_young", "r_later"]
    assert plan.identities == [("device_id", "d1")]
    assert plan.reported == [("device_id", "d1")]
    assert plan.event.kind == "UNMERGE" and plan.event.survivor_id == "ind_old"


def test_unmerging_a_survivor_is_a_failed_precondition():
    data = UnmergeData("ind_a", None, {}, [], [], {}, {})
    with pytest.raises(FailedPrecondition) as info:
        plan_unmerge(data, _config())
    assert info.value.reason == "NOT_MERGED"
