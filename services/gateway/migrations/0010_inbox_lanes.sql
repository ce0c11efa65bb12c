-- Inbox lanes: an event ingested as bulk (a backfill such as `tailor import events`) is stored like any other and
-- acknowledged at once, but the pipeline applies it behind live events (services/gateway/pipeline/worker.py).
-- Each lane has its own index of pending rows, so a take of live rows never walks a bulk backlog.
ALTER TABLE inbox ADD COLUMN bulk boolean NOT NULL DEFAULT false;
DROP INDEX inbox_pending;
CREATE INDEX inbox_pending ON inbox (partition, tenant_id, seq) WHERE processed_at IS NULL AND NOT bulk;
CREATE INDEX inbox_pending_bulk ON inbox (partition, tenant_id, seq) WHERE processed_at IS NULL AND bulk;
-- The oldest pending live event, one index entry away (a bulk take asks whether live work is falling behind).
CREATE INDEX inbox_pending_live_age ON inbox (received_at) WHERE processed_at IS NULL AND NOT bulk;
