"""The SQL of activation: destinations, activations, what each last queued, and the delivery outbox."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from personalization.gateway.v1 import gateway_service_pb2 as pb


@dataclass(frozen=True)
class ActivationRow:
    tenant_id: str
    name: str
    config: pb.Activation
    generation: int
    paused: bool = False
    destination: pb.Destination | None = None   # its destination as stored (paused flag included), None if gone
    feed_token: str = ""          # the membership change feed's cursor
    reconcile_due: bool = True    # the whole segment is to be compared with what was sent


@dataclass(frozen=True)
class DeliveryRow:
    delivery_id: str
    rows: list[dict]
    row_count: int
    state: str
    attempts: int
    due: bool


class ActivationStore:
    """All SQL of activation. Every query names the tenant, except the leader's listing of all activations."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def get_destination(self, tenant_id: str, name: str) -> pb.Destination | None:
        row = await self.pool.fetchrow("SELECT config, paused FROM destinations WHERE tenant_id = $1 AND name = $2",
                                       tenant_id, name)
        return None if row is None else _destination(row)

    async def save_destination(self, tenant_id: str, destination: pb.Destination) -> None:
        """Stores the destination and requeues the halted deliveries of the activations that use it."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO destinations (tenant_id, name, config) VALUES ($1, $2, $3) "
                "ON CONFLICT (tenant_id, name) DO UPDATE SET config = excluded.config, updated_at = now()",
                tenant_id, destination.name, destination.SerializeToString())
            await conn.execute(
                "UPDATE deliveries SET state = 'PENDING', next_attempt_at = now() "
                "WHERE tenant_id = $1 AND state <> 'DELIVERED' AND activation IN "
                "(SELECT name FROM activations WHERE tenant_id = $1 AND destination = $2)",
                tenant_id, destination.name)

    async def list_destinations(self, tenant_id: str, after: str, limit: int) -> list[pb.Destination]:
        rows = await self.pool.fetch(
            "SELECT config, paused FROM destinations WHERE tenant_id = $1 AND name > $2 ORDER BY name LIMIT $3",
            tenant_id, after, limit)
        return [_destination(r) for r in rows]

    async def delete_destination(self, tenant_id: str, name: str) -> int | None:
        """Deletes the destination unless activations use it; returns how many do (0: deleted), None if unknown."""
        async with self.pool.acquire() as conn, conn.transaction():
            exists = await conn.fetchval(
                "SELECT 1 FROM destinations WHERE tenant_id = $1 AND name = $2 FOR UPDATE", tenant_id, name)
            if not exists:
                return None
            users = await conn.fetchval(
                "SELECT count(*) FROM activations WHERE tenant_id = $1 AND destination = $2", tenant_id, name)
            if users == 0:
                await conn.execute("DELETE FROM destinations WHERE tenant_id = $1 AND name = $2", tenant_id, name)
            return users

    async def set_destination_paused(self, tenant_id: str, name: str, paused: bool) -> bool:
        """Pauses or resumes; a resume makes its activations' waiting deliveries due now. False if unknown."""
        async with self.pool.acquire() as conn, conn.transaction():
            updated = await conn.execute("UPDATE destinations SET paused = $3 WHERE tenant_id = $1 AND name = $2",
                                         tenant_id, name, paused)
            if not paused:
                await conn.execute(
                    "UPDATE deliveries SET next_attempt_at = now() WHERE tenant_id = $1 AND state = 'PENDING' "
                    "AND activation IN (SELECT name FROM activations WHERE tenant_id = $1 AND destination = $2)",
                    tenant_id, name)
            return updated.endswith(" 1")

    async def schedule_exists(self, tenant_id: str, name: str) -> bool:
        return bool(await self.pool.fetchval(
            "SELECT 1 FROM batch_schedules WHERE tenant_id = $1 AND name = $2", tenant_id, name))

    async def get_activation(self, tenant_id: str, name: str) -> pb.Activation | None:
        raw = await self.pool.fetchval("SELECT config FROM activations WHERE tenant_id = $1 AND name = $2",
                                       tenant_id, name)
        return None if raw is None else pb.Activation.FromString(raw)

    async def save_activation(self, tenant_id: str, activation: pb.Activation, reset: bool) -> None:
        """Stores the activation and requeues its halted deliveries; reset forgets what it sent (all is resent)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO activations (tenant_id, name, destination, config) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (tenant_id, name) DO UPDATE SET destination = excluded.destination, "
                "config = excluded.config, updated_at = now(), "
                "generation = activations.generation + CASE WHEN $5 THEN 1 ELSE 0 END",
                tenant_id, activation.name, activation.destination, activation.SerializeToString(), reset)
            if reset:
                await conn.execute("UPDATE activations SET feed_token = '', reconciled_at = NULL "
                                   "WHERE tenant_id = $1 AND name = $2", tenant_id, activation.name)
                await conn.execute("DELETE FROM activation_state WHERE tenant_id = $1 AND activation = $2",
                                   tenant_id, activation.name)
                await conn.execute("DELETE FROM activation_batch_progress WHERE tenant_id = $1 AND activation = $2",
                                   tenant_id, activation.name)
            await conn.execute(
                "UPDATE deliveries SET state = 'PENDING', next_attempt_at = now() "
                "WHERE tenant_id = $1 AND activation = $2 AND state <> 'DELIVERED'", tenant_id, activation.name)

    async def list_activations(self, tenant_id: str, after: str, limit: int, only: str | None = None
                               ) -> list[pb.Activation]:
        """Activations by name (or just the one named `only`) with their delivery status, in one query."""
        rows = await self.pool.fetch(
            "SELECT a.config, a.paused, a.delivered_rows, a.last_delivered_at, a.last_error, "
            "coalesce(p.pending_rows, 0) AS pending_rows, coalesce(p.failed, 0) AS failed, "
            "coalesce(extract(epoch FROM now() - p.oldest), 0)::float8 AS lag "
            "FROM activations a LEFT JOIN LATERAL ("
            "  SELECT sum(d.row_count) AS pending_rows, count(*) FILTER (WHERE d.attempts > 0) AS failed, "
            "         min(d.created_at) AS oldest "
            "  FROM deliveries d WHERE d.tenant_id = a.tenant_id AND d.activation = a.name "
            "  AND d.state <> 'DELIVERED') p ON true "
            "WHERE a.tenant_id = $1 AND a.name > $2 AND ($4::text IS NULL OR a.name = $4) ORDER BY a.name LIMIT $3",
            tenant_id, after, limit, only)
        out = []
        for r in rows:
            activation = pb.Activation.FromString(r["config"])
            activation.paused = r["paused"]
            status = activation.status
            status.delivered_rows = r["delivered_rows"]
            status.pending_rows = r["pending_rows"]
            status.failed_attempts = r["failed"]
            status.lag_seconds = max(r["lag"], 0.0)
            status.last_error = r["last_error"]
            if r["last_delivered_at"] is not None:
                status.last_delivery_time.FromDatetime(r["last_delivered_at"])
            out.append(activation)
        return out

    async def all_activations(self, tenant_id: str | None = None, reconcile_seconds: float = 3600.0
                              ) -> list[ActivationRow]:
        rows = await self.pool.fetch(
            "SELECT a.tenant_id, a.name, a.config, a.generation, a.paused, d.config AS dconfig, d.paused AS dpaused, "
            "a.feed_token, a.reconciled_at IS NULL OR a.reconciled_at < now() - make_interval(secs => $2) AS due "
            "FROM activations a LEFT JOIN destinations d ON d.tenant_id = a.tenant_id AND d.name = a.destination "
            "WHERE $1::text IS NULL OR a.tenant_id = $1 ORDER BY a.tenant_id, a.name", tenant_id, reconcile_seconds)
        return [ActivationRow(r["tenant_id"], r["name"], pb.Activation.FromString(r["config"]), r["generation"],
                              r["paused"], _destination({"config": r["dconfig"], "paused": r["dpaused"]})
                              if r["dconfig"] is not None else None, r["feed_token"], r["due"]) for r in rows]

    async def delete_activation(self, tenant_id: str, name: str) -> int | None:
        """Deletes the activation, its state and its deliveries; returns how many were undelivered (None if
        unknown)."""
        async with self.pool.acquire() as conn, conn.transaction():
            deleted = await conn.execute("DELETE FROM activations WHERE tenant_id = $1 AND name = $2", tenant_id, name)
            if not deleted.endswith(" 1"):
                return None
            dropped = await conn.fetchval(
                "WITH gone AS (DELETE FROM deliveries WHERE tenant_id = $1 AND activation = $2 RETURNING state) "
                "SELECT count(*) FILTER (WHERE state <> 'DELIVERED') FROM gone", tenant_id, name)
            for table in ("activation_state", "activation_batch_progress"):
                await conn.execute(f"DELETE FROM {table} WHERE tenant_id = $1 AND activation = $2", tenant_id, name)
            return dropped

    async def set_activation_paused(self, tenant_id: str, name: str, paused: bool) -> bool:
        """Pauses or resumes; a resume makes its waiting deliveries due now. False if unknown."""
        async with self.pool.acquire() as conn, conn.transaction():
            updated = await conn.execute("UPDATE activations SET paused = $3 WHERE tenant_id = $1 AND name = $2",
                                         tenant_id, name, paused)
            if not paused:
                await conn.execute("UPDATE deliveries SET next_attempt_at = now() WHERE tenant_id = $1 "
                                   "AND activation = $2 AND state = 'PENDING'", tenant_id, name)
            return updated.endswith(" 1")

    async def load_state(self, tenant_id: str, activation: str, only: list[str] | None = None
                         ) -> dict[str, tuple[bool, str]]:
        """What was last queued per individual: all of the activation's, or only those named."""
        rows = await self.pool.fetch(
            "SELECT unified_individual_id, member, attributes_hash FROM activation_state "
            "WHERE tenant_id = $1 AND activation = $2 AND ($3::text[] IS NULL OR unified_individual_id = ANY($3))",
            tenant_id, activation, only)
        return {r["unified_individual_id"]: (r["member"], r["attributes_hash"]) for r in rows}

    async def delivered_members(self, tenant_id: str, activation: str) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT unified_individual_id FROM activation_state WHERE tenant_id = $1 AND activation = $2 AND member",
            tenant_id, activation)
        return [r["unified_individual_id"] for r in rows]

    async def open_batch_jobs(self, tenant_id: str, activation: str, schedule: str) -> list[tuple[str, list[str]]]:
        """Finished jobs of the schedule whose rows are not all queued yet, with where to resume."""
        rows = await self.pool.fetch(
            "SELECT j.job_id, coalesce(p.after_key, '{}') AS after_key FROM batch_jobs j "
            "LEFT JOIN activation_batch_progress p "
            "  ON p.tenant_id = j.tenant_id AND p.activation = $3 AND p.job_id = j.job_id "
            "WHERE j.tenant_id = $1 AND j.schedule_name = $2 AND j.state = 'SUCCEEDED' "
            "AND NOT coalesce(p.done, false) ORDER BY j.ended_at NULLS LAST, j.job_id",
            tenant_id, schedule, activation)
        return [(r["job_id"], list(r["after_key"])) for r in rows]

    async def batch_rows(self, tenant_id: str, job_id: str, after_key: list[str], limit: int) -> list[dict]:
        uid, point = (after_key + ["", ""])[:2]
        rows = await self.pool.fetch(
            "SELECT individual_id, unified_individual_id, segment_id, point_id, point_name, decision_id, "
            "job_id, personalization_id, payload::text AS payload, updated_at FROM batch_results "
            "WHERE tenant_id = $1 AND job_id = $2 AND (unified_individual_id, point_name) > ($3, $4) "
            "ORDER BY unified_individual_id, point_name LIMIT $5", tenant_id, job_id, uid, point, limit)
        return [{"individual_id": r["individual_id"], "unified_individual_id": r["unified_individual_id"],
                 "segment_id": r["segment_id"], "point_id": r["point_id"], "point_name": r["point_name"],
                 "decision_id": r["decision_id"], "batch_job_id": r["job_id"],
                 "personalization_id": r["personalization_id"], "payload": json.loads(r["payload"]),
                 "updated_time": r["updated_at"].astimezone(UTC).isoformat()} for r in rows]

    async def commit(self, tenant_id: str, activation: str, generation: int, deliveries: list[tuple[str, list[dict]]],
                     upserts: Sequence[tuple[str, bool, str]] = (), deletes: Sequence[str] = (),
                     progress: tuple[str, list[str], bool] | None = None, feed_token: str | None = None,
                     reconciled: bool = False) -> bool:
        """Queues deliveries and advances the state (and the feed cursor) in one transaction; False (nothing
        written) when the activation was changed since the refresh began."""
        async with self.pool.acquire() as conn, conn.transaction():
            current = await conn.fetchval(
                "SELECT generation FROM activations WHERE tenant_id = $1 AND name = $2 FOR UPDATE",
                tenant_id, activation)
            if current != generation:
                return False
            if deliveries:
                await conn.execute(
                    "INSERT INTO deliveries (tenant_id, delivery_id, activation, rows, row_count) "
                    "SELECT $1, d, $2, r::jsonb, c FROM unnest($3::text[], $4::text[], $5::int[]) "
                    "WITH ORDINALITY AS u(d, r, c, o) ORDER BY o",
                    tenant_id, activation, [d for d, _ in deliveries],
                    [json.dumps(rows, separators=(",", ":")) for _, rows in deliveries],
                    [len(rows) for _, rows in deliveries])
            if upserts:
                await conn.execute(
                    "INSERT INTO activation_state (tenant_id, activation, unified_individual_id, member, "
                    "attributes_hash) SELECT $1, $2, u, m, h FROM unnest($3::text[], $4::bool[], $5::text[]) "
                    "AS x(u, m, h) ON CONFLICT (tenant_id, activation, unified_individual_id) DO UPDATE SET "
                    "member = excluded.member, attributes_hash = excluded.attributes_hash, updated_at = now()",
                    tenant_id, activation, [u for u, _, _ in upserts], [m for _, m, _ in upserts],
                    [h for _, _, h in upserts])
            if deletes:
                await conn.execute(
                    "DELETE FROM activation_state WHERE tenant_id = $1 AND activation = $2 "
                    "AND unified_individual_id = ANY($3::text[])", tenant_id, activation, list(deletes))
            if feed_token is not None:
                await conn.execute(
                    "UPDATE activations SET feed_token = $3, "
                    "reconciled_at = CASE WHEN $4 THEN now() ELSE reconciled_at END "
                    "WHERE tenant_id = $1 AND name = $2", tenant_id, activation, feed_token, reconciled)
            if progress is not None:
                job_id, after_key, done = progress
                await conn.execute(
                    "INSERT INTO activation_batch_progress (tenant_id, activation, job_id, after_key, done) "
                    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, activation, job_id) DO UPDATE SET "
                    "after_key = excluded.after_key, done = excluded.done",
                    tenant_id, activation, job_id, after_key, done)
            return True

    async def open_deliveries(self, tenant_id: str, activation: str, limit: int) -> list[DeliveryRow]:
        rows = await self.pool.fetch(
            "SELECT delivery_id, rows::text AS rows, row_count, state, attempts, next_attempt_at <= now() AS due "
            "FROM deliveries WHERE tenant_id = $1 AND activation = $2 AND state <> 'DELIVERED' "
            "ORDER BY seq LIMIT $3", tenant_id, activation, limit)
        return [DeliveryRow(r["delivery_id"], json.loads(r["rows"]), r["row_count"], r["state"], r["attempts"],
                            r["due"]) for r in rows]

    async def mark_delivered(self, tenant_id: str, activation: str, delivery: DeliveryRow) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            updated = await conn.execute(
                "UPDATE deliveries SET state = 'DELIVERED', delivered_at = now() "
                "WHERE tenant_id = $1 AND delivery_id = $2 AND state <> 'DELIVERED'", tenant_id, delivery.delivery_id)
            if updated.endswith(" 1"):
                await conn.execute(
                    "UPDATE activations SET delivered_rows = delivered_rows + $3, last_delivered_at = now() "
                    "WHERE tenant_id = $1 AND name = $2", tenant_id, activation, delivery.row_count)

    async def mark_failed(self, tenant_id: str, activation: str, delivery_id: str, error: str, permanent: bool,
                          retry_seconds: float) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE deliveries SET attempts = attempts + 1, last_error = $3, "
                "failures = (SELECT coalesce(jsonb_agg(f ORDER BY n), '[]') FROM ("
                "  SELECT f, n FROM jsonb_array_elements(failures || jsonb_build_array(jsonb_build_object("
                "    'at', now(), 'error', $3::text))) WITH ORDINALITY AS x(f, n) ORDER BY n DESC LIMIT 20) kept), "
                "state = CASE WHEN $4 THEN 'FAILED' ELSE 'PENDING' END, "
                "next_attempt_at = now() + make_interval(secs => $5) WHERE tenant_id = $1 AND delivery_id = $2",
                tenant_id, delivery_id, error[:2000], permanent, retry_seconds)
            await conn.execute("UPDATE activations SET last_error = $3 WHERE tenant_id = $1 AND name = $2",
                               tenant_id, activation, error[:2000])

    async def list_deliveries(self, tenant_id: str, activation: str, state: str, before_seq: int | None,
                              limit: int) -> list[tuple[int, pb.Delivery]]:
        """(seq, delivery) newest first, in one state or all, before a seq (for paging)."""
        rows = await self.pool.fetch(
            "SELECT seq, delivery_id, state, row_count, created_at, delivered_at, next_attempt_at, "
            "failures::text AS failures FROM deliveries WHERE tenant_id = $1 AND activation = $2 "
            "AND ($3 = '' OR state = $3) AND ($4::bigint IS NULL OR seq < $4) ORDER BY seq DESC LIMIT $5",
            tenant_id, activation, state, before_seq, limit)
        out = []
        for r in rows:
            d = pb.Delivery(delivery_id=r["delivery_id"], state=pb.DeliveryState.Value("DELIVERY_STATE_" + r["state"]),
                            row_count=r["row_count"])
            d.create_time.FromDatetime(r["created_at"])
            if r["delivered_at"] is not None:
                d.deliver_time.FromDatetime(r["delivered_at"])
            else:
                d.next_attempt_time.FromDatetime(r["next_attempt_at"])
            for f in json.loads(r["failures"]):
                attempt = d.failed_attempts.add(error=f["error"])
                attempt.attempt_time.FromDatetime(datetime.fromisoformat(f["at"]))
            out.append((r["seq"], d))
        return out

    async def record_error(self, tenant_id: str, activation: str, error: str) -> None:
        await self.pool.execute("UPDATE activations SET last_error = $3 WHERE tenant_id = $1 AND name = $2",
                                tenant_id, activation, error[:2000])

    async def prune(self, hours: float) -> None:
        """Forgets delivered deliveries older than the retention (their counts stay on the activation)."""
        await self.pool.execute("DELETE FROM deliveries WHERE state = 'DELIVERED' "
                                "AND delivered_at < now() - make_interval(secs => $1)", hours * 3600.0)


def _destination(row) -> pb.Destination:
    d = pb.Destination.FromString(row["config"])
    d.paused = row["paused"]
    return d
