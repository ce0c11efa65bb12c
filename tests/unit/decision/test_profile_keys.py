"""The profile keys a point reads, computed when its configuration is loaded (QualifyResponse.profile_keys)."""

from __future__ import annotations

from dataclasses import replace

from services.decision.domain import Decision
from services.decision.service import DecisionService
from tests.unit.decision.fakes import FakeRepository
from tests.unit.decision.test_service import BANNER, RECS, Clock, T, add


async def _service() -> DecisionService:
    service = DecisionService(FakeRepository(), cache_seconds=2.0, clock=Clock())
    await service.points.upsert(T, BANNER)
    await service.points.upsert(T, RECS)
    return service


async def test_a_point_reads_the_keys_its_rules_name_and_a_recommending_one_its_affinities():
    service = await _service()
    await add(service, "vip", rule='"vip" in profile.segments', priority=2)
    await add(service, "rich", rule="profile.insights.spend > 10.0 && context.channel == 'web'", priority=1)
    await add(service, "everyone", fallback=True)
    assert await service.qualifier.profile_keys(T, ["home_banner"]) == {"segments", "insights"}
    await service.decisions.upsert(T, Decision(decision_id="", point_name="recs_block", name="top",
                                               recommender="top_sellers", count=5))
    assert await service.qualifier.profile_keys(T, ["recs_block"]) == {"affinities"}
    assert await service.qualifier.profile_keys(T, ["home_banner", "recs_block", "nope"]) == {
        "segments", "insights", "affinities"}
    # Qualifying alone reads only what rules, consents and bandits read: the boosters' affinities are for serving.
    assert await service.qualifier.profile_keys(T, ["home_banner", "recs_block"], serving=False) == {
        "segments", "insights"}
    assert await service.qualifier.profile_keys(T, ["recs_block"], serving=False) == set()
    await service.decisions.upsert(T, Decision(decision_id="", point_name="recs_block", name="fans", priority=3,
                                               rule="profile.affinities.category.shoes > 0.5",
                                               recommender="top_sellers", count=5))
    assert await service.qualifier.profile_keys(T, ["recs_block"], serving=False) == {"affinities"}


async def test_a_rule_reading_the_whole_profile_or_asking_consent_widens_the_keys_once_saved():
    service = await _service()
    await add(service, "first", rule='"vip" in profile.segments')
    assert await service.qualifier.profile_keys(T, ["home_banner"]) == {"segments"}
    await add(service, "whole", rule="size(profile) > 0")
    assert await service.qualifier.profile_keys(T, ["home_banner"]) == {
        "attributes", "insights", "segments", "events", "affinities", "consents"}
    service = await _service()
    await service.points.upsert(T, replace(BANNER, consent_purpose="marketing"))
    await add(service, "everyone", fallback=True)
    assert await service.qualifier.profile_keys(T, ["home_banner"]) == {"consents"}
