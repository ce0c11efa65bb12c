"""The decision service on a real PostgreSQL, served once per test module, and a connection to its schema."""

import pytest

from personalization.decision.v1 import decision_service_pb2_grpc as pb_grpc
from services.decision.server import build
from tests.conftest import schema_connection, serving


@pytest.fixture(scope="module")
async def server(database_url):
    async with serving(await build(database_url), pb_grpc.DecisionServiceStub) as stub:
        yield stub


@pytest.fixture
async def db(database_url):
    async with schema_connection(database_url, "decision") as conn:
        yield conn
