-- The inbox is divided into partitions by a hash of (tenant, routing identity): pipeline workers lease partitions,
-- take work per tenant in turn, and a failing event holds back only its own routing identity's later events.
ALTER TABLE inbox ADD COLUMN route bigint NOT NULL DEFAULT 0;          -- hash of the event's routing identity
ALTER TABLE inbox ADD COLUMN partition integer NOT NULL DEFAULT 0;     -- route modulo the partition count
ALTER TABLE inbox ADD COLUMN last_reason text;                         -- status code name of the last failure
DROP INDEX inbox_pending;
CREATE INDEX inbox_pending ON inbox (partition, tenant_id, seq) WHERE processed_at IS NULL;
CREATE INDEX inbox_pending_by_tenant ON inbox (tenant_id, received_at) WHERE processed_at IS NULL;

-- One row per partition; a worker owns a partition while its lease lasts.
CREATE TABLE pipeline_partitions (
    partition   integer PRIMARY KEY,
    owner       text,
    lease_until timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO pipeline_partitions (partition) SELECT generate_series(0, 31);

-- Live pipeline workers (a heartbeat within the lease time), so partitions are shared out evenly.
CREATE TABLE pipeline_workers (
    worker_id    text PRIMARY KEY,
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- A routing identity whose oldest pending event failed and waits for a retry: its later events wait too.
CREATE TABLE blocked_routes (
    tenant_id text NOT NULL,
    route     bigint NOT NULL,
    until     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, route)
);

ALTER TABLE dead_letters ADD COLUMN reason text NOT NULL DEFAULT 'UNKNOWN';
ALTER TABLE dead_letters ADD COLUMN received_at timestamptz;
CREATE INDEX dead_letters_by_time ON dead_letters (tenant_id, failed_at DESC, message_id);
