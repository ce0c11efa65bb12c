"""GetUsageStats: a tenant's requests, points served and distinct individuals over a window, from the decision log.
An admin key reads its own tenant's; the operator key names any tenant."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2

from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from services.gateway.ports import DecisionPort
from services.gateway.tenants import named_tenant
from shared.context import current_tenant
from shared.errors import Violations

DEFAULT_WINDOW = timedelta(hours=24)


def _time(ts: timestamp_pb2.Timestamp, field: str, v: Violations) -> datetime | None:
    if not ts.seconds and not ts.nanos:
        return None
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        v.add(field, "must be a valid time")
        return None


class UsageStats:
    """Asks the decision service to count the tenant's decision log over the window (default: the last 24 hours)."""

    def __init__(self, decision: DecisionPort, tenant_exists: Callable[[str], Awaitable[bool]] | None = None):
        self.decision = decision
        self.tenant_exists = tenant_exists

    async def get(self, request: pb.GetUsageStatsRequest) -> pb.GetUsageStatsResponse:
        async with named_tenant(request.tenant_id, self.tenant_exists, "usage"):
            return await self._get(request)

    async def _get(self, request: pb.GetUsageStatsRequest) -> pb.GetUsageStatsResponse:
        v = Violations()
        start, end = _time(request.start_time, "start_time", v), _time(request.end_time, "end_time", v)
        v.raise_if_any()
        end = end or datetime.now(UTC)
        start = start or end - DEFAULT_WINDOW
        window = decision_pb.GetDecisionLogStatsRequest()
        window.start_time.FromDatetime(start)
        window.end_time.FromDatetime(end)
        stats = await self.decision.GetDecisionLogStats(window)
        reply = pb.GetUsageStatsResponse(
            tenant_id=current_tenant(), start_time=window.start_time, end_time=window.end_time,
            request_count=stats.request_count, served_count=stats.served_count,
            unique_individuals=stats.unique_individuals,
            points=[pb.PointUsage(point_name=p.point_name, served_count=p.served_count,
                                  unique_individuals=p.unique_individuals) for p in stats.points])
        return reply
