"""A small sample of the fuzzer (tests/fuzz) on every public and every internal RPC, against real servers.

Each drawn request must end in success or a precise client error: never INTERNAL or UNKNOWN, no server that stops
answering, no RESOURCE_EXHAUSTED without RetryInfo, no error text that repeats more than 40 characters of a request
string, and no row of the tenant changed by a refused write; another tenant's rows stay as they were. The draws are
derandomized, so a failure here repeats. The bench (tests/bench/fuzz.py) runs 2,000 cases per RPC.
"""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pool

from services.gateway.auth import METHOD_SCOPES
from tests.fuzz.harness import DOMAIN_SERVICES
from tests.fuzz.setup import FuzzSession

CASES = 5  # per RPC: the whole module stays under a minute
SEED = 12

# Every target by name, known before the servers start: public methods (API key, on the gateway's port) and the
# methods of the four domain services (on their own ports).
NAMES = [f"public:{path.rsplit('.', 1)[1]}" for path in METHOD_SCOPES] + [
    f"internal:{full.rsplit('.', 1)[1]}/{method.name}"
    for full in DOMAIN_SERVICES.values() for method in descriptor_pool.Default().FindServiceByName(full).methods]


@pytest.fixture(scope="module")
def fuzzing(database_url):
    with FuzzSession(database_url) as session:
        yield session


def test_every_public_and_internal_rpc_is_a_target(fuzzing):
    assert sorted(t.name for t in fuzzing.targets) == sorted(NAMES)
    assert len({n for n in NAMES if n.startswith("internal:")}) == sum(
        len(descriptor_pool.Default().FindServiceByName(full).methods) for full in DOMAIN_SERVICES.values())


@pytest.mark.parametrize("name", NAMES)
def test_drawn_requests_end_in_success_or_a_precise_client_error(fuzzing, name):
    [target] = [t for t in fuzzing.targets if t.name == name]
    tally = fuzzing.fuzzer.tally
    cases, failures = tally.cases, len(tally.failures)

    fuzzing.run(CASES, [target], seed=SEED)

    assert tally.cases - cases >= 1
    found = tally.failures[failures:]
    assert not found, "\n".join(f"{f.target} ({f.request_bytes} B): {f.problem}" for f in found[:5])


def test_no_server_stopped_and_the_other_tenant_is_untouched(fuzzing):
    assert fuzzing.fuzzer.tally.crashes == 0
    assert fuzzing.others_unchanged()
