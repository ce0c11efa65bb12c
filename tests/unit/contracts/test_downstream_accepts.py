"""What the gateway accepts, every service downstream accepts: generated events, near the contract's limits, go
through the gateway's ingest validation and then through each validator the pipeline feeds them to."""

from __future__ import annotations

import asyncio
import json
import math
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.identity.v1 import identity_service_pb2 as identity_pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from personalization.recommender.v1 import recommender_service_pb2 as rec_pb
from services.decision.service import DecisionService
from services.decision.servicer import outcome_from_proto
from services.gateway.ingest import validate_batch
from services.gateway.pipeline import interactions_of, outcome_of
from services.identity import matching
from services.identity.model import Config
from services.identity.servicer import _attributes
from services.identity.subjects import validate_subjects
from services.profile_graph import domain as profile_domain
from services.profile_graph.servicer import to_new_event
from services.recommender.servicer import _interaction
from services.recommender.validation import validate_interactions
from shared import contract
from tests.unit.decision.fakes import FakeRepository

IDENTITY_TYPES = ("email", "customer_id", "device_id", "crm_contact_key")
NOW = int(time.time())
CONFIG = Config(dict(matching.BUILT_IN_TYPES), matching.DEFAULT_RULESET)
# Text as clients send it: any code point but NUL and lone surrogates (which cannot be UTF-8).
CHARS = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")


def text(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    # Mostly short, sometimes right at the limit.
    return st.one_of(st.text(CHARS, min_size=min_size, max_size=min(max_size, 12)),
                     st.text(CHARS, min_size=max_size, max_size=max_size)).filter(
        lambda s: min_size == 0 or s.strip())


NAME = st.from_regex(r"\A[a-z][a-z0-9_]{0,63}\Z")
FINITE = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15)
SCALAR = st.one_of(st.none(), st.booleans(), FINITE, text(0, 512))


def json_value(depth: int, strings: int) -> st.SearchStrategy:
    scalar = st.one_of(st.none(), st.booleans(), FINITE, text(0, strings))
    if depth <= 1:
        return scalar
    inner = json_value(depth - 1, strings)
    return st.one_of(scalar, st.lists(inner, max_size=3),
                     st.dictionaries(text(1, 20), inner, max_size=3))


# Attributes: scalars, or lists and objects inside the declared depth (3) and JSON size of each value (2 KiB).
ATTRIBUTES = st.dictionaries(text(1, 64), st.one_of(SCALAR, json_value(3, 40)), max_size=6).filter(
    lambda d: all(len(json.dumps(v, sort_keys=True)) <= 2048 for v in d.values()))
PROPERTIES = st.dictionaries(text(1, 128), json_value(8, 200), max_size=6)


@st.composite
def events(draw) -> common_pb2.Event:
    kind = draw(st.sampled_from([t for t in common_pb2.EventType.values() if t]))
    event = common_pb2.Event(message_id=draw(text(1, 128)), type=kind)
    event.event_time.seconds = draw(st.integers(1, NOW + 3600))
    event.event_time.nanos = draw(st.integers(0, 999_999_999))
    for _ in range(draw(st.integers(1, 3))):
        event.identities.add(type=draw(st.sampled_from(IDENTITY_TYPES)), value=draw(text(1, 512)))
    if kind == common_pb2.EVENT_TYPE_CUSTOM or draw(st.booleans()):
        event.name = draw(text(1, 128))
    if kind in (common_pb2.EVENT_TYPE_PRODUCT_VIEW, common_pb2.EVENT_TYPE_ADD_TO_CART) or draw(st.booleans()):
        event.item_id = draw(text(1, 256))
    returned = kind == common_pb2.EVENT_TYPE_RETURN
    if kind == common_pb2.EVENT_TYPE_PURCHASE or returned or draw(st.booleans()):
        for _ in range(draw(st.integers(1, 4))):
            quantity = draw(st.floats(-1e9, 1e9, allow_nan=False).filter(lambda q: q != 0))
            quantity = abs(quantity) if returned else quantity  # a return lists the units returned
            event.line_items.add(item_id=draw(text(1, 256)), quantity=quantity,
                                 unit_price=draw(st.floats(0, 1e12, allow_nan=False)))
    if returned and draw(st.booleans()):
        event.order_id = draw(text(1, 128))
    event.attributes.update(draw(ATTRIBUTES))
    event.properties.update(draw(PROPERTIES))
    if draw(st.booleans()):
        event.properties["personalization_id"] = draw(text(0, 200))
    if draw(st.booleans()):
        event.source = draw(NAME)
    for _ in range(draw(st.integers(0, 2))):
        event.consents.add(purpose=draw(NAME), status=draw(st.sampled_from([1, 2])))
    for _ in range(draw(st.integers(0, 2))):
        obj = event.profile_objects.add(type=draw(NAME), object_id=draw(text(1, 128)))
        obj.attributes.update(draw(st.dictionaries(text(1, 64), json_value(4, 100), max_size=4)))
    return event


def _accepted_by_every_service(event: common_pb2.Event) -> None:
    unified = "ind_0123456789abcdef"
    # identity: ResolveIdentities as the pipeline sends it
    request = identity_pb.ResolveIdentitiesRequest(
        subjects=[identity_pb.Subject(identities=event.identities, attributes=event.attributes)])
    contract.check(request)
    validate_subjects([[(i.type, i.value) for i in s.identities] for s in request.subjects], CONFIG, "US",
                      [_attributes(s) for s in request.subjects])
    # profile graph: AppendEvents
    append = profile_pb.AppendEventsRequest(events=[profile_pb.IndividualEvent(unified_individual_id=unified,
                                                                               event=event)])
    contract.check(append)
    profile_domain.validate_events([to_new_event(ie) for ie in append.events])
    # recommender: RecordInteractions
    interactions = rec_pb.RecordInteractionsRequest(interactions=interactions_of(unified, event))
    contract.check(interactions)
    validate_interactions([_interaction(m) for m in interactions.interactions])
    # decision: RecordOutcomes
    outcome = outcome_of(unified, event)
    if outcome is not None:
        outcomes = decision_pb.RecordOutcomesRequest(outcomes=[outcome])
        contract.check(outcomes)
        service = DecisionService(FakeRepository(), cache_seconds=0.0)
        assert asyncio.run(service.outcomes.record("t", [outcome_from_proto(o) for o in outcomes.outcomes])) == 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(events())
def test_every_event_the_gateway_accepts_is_accepted_by_every_service_downstream(event):
    validate_batch([event], known=frozenset(IDENTITY_TYPES))
    _accepted_by_every_service(event)


def test_a_purchase_near_every_limit_at_once_is_accepted_downstream():
    # Every count and length at (or, for line items, near) its limit; together just under the event size limit.
    event = common_pb2.Event(message_id="m" * 128, type=common_pb2.EVENT_TYPE_PURCHASE, name="n" * 128,
                             item_id="i" * 256, source="s" * 64)
    event.event_time.seconds = int(time.time()) + 86_000
    event.event_time.nanos = 999_999_999
    for n in range(32):
        event.identities.add(type="customer_id", value=f"{n:03d}" + "\u00e9" * 509)
    for n in range(600):
        event.line_items.add(item_id=f"{n:04d}" + "x" * 252, quantity=1e9 if n % 2 else -1e9, unit_price=1e12)
    event.attributes.update({f"a{n:02d}": "\u00e9" * 160 for n in range(100)})
    assert 200_000 < event.ByteSize() <= contract.MAX_EVENT_BYTES
    validate_batch([event], known=frozenset(IDENTITY_TYPES))
    _accepted_by_every_service(event)
    assert math.isfinite(sum(i.revenue for i in interactions_of("x", event)))


def test_an_identity_value_that_lowercasing_lengthens_is_accepted_downstream():
    event = common_pb2.Event(message_id="m", type=common_pb2.EVENT_TYPE_PAGE_VIEW,
                             identities=[common_pb2.Identity(type="email", value="\u0130" * 512)])
    event.event_time.seconds = NOW
    validate_batch([event], known=frozenset(IDENTITY_TYPES))
    _accepted_by_every_service(event)
