"""Prometheus metrics of one process, served over HTTP on TAILOR_METRICS_PORT (default: the service port + 1000).

Every process counts the RPCs it handles (by method and status code) and their latency; the gateway adds events
acknowledged at ingest, personalization points served and distinct individuals served (per tenant), the pipeline's
backlog, lag and dead letters per tenant, and the progress of batch jobs (members done and in all, per tenant and
job). Metric names start with `tailor_`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Sequence

from datasketches import hll_sketch
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from shared.log import get_logger
from shared.settings import env_int

log = get_logger("shared.metrics")

# Offset of the metrics port from the service port when TAILOR_METRICS_PORT is not set (50051 -> 51051).
PORT_OFFSET = 1000
# The HyperLogLog precision: 2^12 registers, about 1.6 % relative error, a few KB per tenant.
HLL_LG_K = 12
BIND_RETRY_SECONDS = 5.0

RPC_REQUESTS = Counter("tailor_rpc_requests", "RPCs handled, by full method name and status code",
                       ["method", "code"])
RPC_SECONDS = Histogram("tailor_rpc_duration_seconds", "Time to handle an RPC, by full method name and status code",
                        ["method", "code"],
                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
INGESTED = Counter("tailor_ingest_events", "Events answered at ingest, by tenant and acknowledgement (stored, "
                   "duplicate; rejected: left out by skip_invalid)", ["tenant", "status"])
POINTS_SERVED = Counter("tailor_points_served", "Personalization points served (decision-log rows: decisions, "
                        "recommendations, batch), by tenant and point", ["tenant", "point"])
PIPELINE_BACKLOG = Gauge("tailor_pipeline_backlog_events", "Acknowledged events not yet processed, by tenant",
                         ["tenant"])
PIPELINE_BULK_BACKLOG = Gauge("tailor_pipeline_bulk_backlog_events", "Of the backlog, events ingested as bulk "
                              "(a backfill, applied behind live events), by tenant", ["tenant"])
PIPELINE_LAG = Gauge("tailor_pipeline_lag_seconds", "Age of the oldest unprocessed event, by tenant", ["tenant"])
PIPELINE_DEAD_LETTERS = Gauge("tailor_pipeline_dead_letters", "Events the pipeline gave up on, by tenant", ["tenant"])
BATCH_DONE = Gauge("tailor_batch_job_members_done", "Segment members a batch job has decided and committed, by "
                   "tenant and job", ["tenant", "job"])
BATCH_TOTAL = Gauge("tailor_batch_job_members_total", "Segment members of a batch job (counted when it started; 0 for "
                    "a scheduled job, whose size is not counted), by tenant and job", ["tenant", "job"])
# The series of this many most recent batch jobs are kept (a finished job's stay at its final values until then).
BATCH_JOBS_KEPT = 50


class _UniqueIndividuals(Collector):
    """tailor_unique_individuals{tenant}: distinct individuals served since the process started (HyperLogLog)."""

    def __init__(self) -> None:
        self.sketches: dict[str, hll_sketch] = {}
        self.lock = threading.Lock()  # scrapes run on the HTTP server's thread

    def add(self, tenant: str, individual: str) -> None:
        self.add_many(tenant, (individual,))

    def add_many(self, tenant: str, individuals: Iterable[str]) -> None:
        with self.lock:
            sketch = self.sketches.get(tenant)
            if sketch is None:
                sketch = self.sketches[tenant] = hll_sketch(HLL_LG_K)
            for individual in individuals:
                sketch.update(individual)

    def collect(self):
        family = GaugeMetricFamily("tailor_unique_individuals", "Distinct individuals served personalization since "
                                   "the process started, by tenant (approximate: HyperLogLog, about 1.6 % error)",
                                   labels=["tenant"])
        with self.lock:
            for tenant, sketch in self.sketches.items():
                family.add_metric([tenant], round(sketch.get_estimate()))
        yield family


_pipeline_tenants: set[str] = set()
_batch_jobs: dict[tuple[str, str], None] = {}  # (tenant, job) in the order they started, oldest first
UNIQUE_INDIVIDUALS = _UniqueIndividuals()
REGISTRY.register(UNIQUE_INDIVIDUALS)


def record_rpc(method: str, code: str, seconds: float) -> None:
    """Counts one handled RPC and observes its duration."""
    RPC_REQUESTS.labels(method, code).inc()
    RPC_SECONDS.labels(method, code).observe(seconds)


def record_ingested(tenant: str, stored: int, duplicate: int) -> None:
    """Counts the acknowledgements of one ingest call."""
    if stored:
        INGESTED.labels(tenant, "stored").inc(stored)
    if duplicate:
        INGESTED.labels(tenant, "duplicate").inc(duplicate)


def record_rejected(tenant: str, count: int) -> None:
    """Counts the events an ingest call with skip_invalid left out for their content."""
    INGESTED.labels(tenant, "rejected").inc(count)


def record_served(tenant: str, point: str, individual: str) -> None:
    """Counts one personalization point served to an individual (empty for an anonymous one)."""
    POINTS_SERVED.labels(tenant, point).inc()
    if individual:
        UNIQUE_INDIVIDUALS.add(tenant, individual)


def record_served_many(tenant: str, point: str, individuals: Sequence[str]) -> None:
    """record_served for many individuals served the same point (a batch job's page)."""
    POINTS_SERVED.labels(tenant, point).inc(len(individuals))
    UNIQUE_INDIVIDUALS.add_many(tenant, [i for i in individuals if i])


def set_pipeline(rows: list[tuple[str, int, float, int, int]]) -> None:
    """Sets the pipeline gauges from (tenant, backlog, lag seconds, dead letters, bulk backlog) rows; tenants absent
    are zeroed."""
    seen = set()
    for tenant, backlog, lag, dead, bulk in rows:
        seen.add(tenant)
        PIPELINE_BACKLOG.labels(tenant).set(backlog)
        PIPELINE_BULK_BACKLOG.labels(tenant).set(bulk)
        PIPELINE_LAG.labels(tenant).set(lag)
        PIPELINE_DEAD_LETTERS.labels(tenant).set(dead)
    for tenant in _pipeline_tenants - seen:
        for gauge in (PIPELINE_BACKLOG, PIPELINE_BULK_BACKLOG, PIPELINE_LAG, PIPELINE_DEAD_LETTERS):
            gauge.labels(tenant).set(0)
    _pipeline_tenants.update(seen)


def start_batch_job(tenant: str, job: str, done: int, total: int) -> None:
    """A batch job starts (or resumes from its checkpoint with done members already committed)."""
    _batch_jobs.pop((tenant, job), None)
    _batch_jobs[(tenant, job)] = None
    while len(_batch_jobs) > BATCH_JOBS_KEPT:
        old = next(iter(_batch_jobs))
        del _batch_jobs[old]
        for gauge in (BATCH_DONE, BATCH_TOTAL):
            try:
                gauge.remove(*old)
            except KeyError:
                pass
    BATCH_DONE.labels(tenant, job).set(done)
    BATCH_TOTAL.labels(tenant, job).set(total)


def add_batch_progress(tenant: str, job: str, members: int) -> None:
    """A page of a batch job's members was committed."""
    BATCH_DONE.labels(tenant, job).inc(members)


def metrics_port(service_port: int) -> int:
    """TAILOR_METRICS_PORT, else the service port + 1000; 0 (or a service on port 0, as in tests) means none."""
    default = service_port + PORT_OFFSET if service_port else 0
    return env_int("TAILOR_METRICS_PORT", default, minimum=0, maximum=65535)


async def serve(port: int, host: str = "0.0.0.0") -> None:
    """Serves /metrics on port until cancelled. While the port is taken (a predecessor draining during a rolling
    restart), retries every few seconds rather than failing the process."""
    if not port:
        return
    warned = False
    while True:
        try:
            server, thread = start_http_server(port, addr=host)
            break
        except OSError as err:
            if not warned:
                log.warning("metrics_port_busy", port=port, error=str(err), retry_s=BIND_RETRY_SECONDS)
                warned = True
            await asyncio.sleep(BIND_RETRY_SECONDS)
    log.info("metrics_serving", port=port)
    try:
        await asyncio.Event().wait()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)
