-- Activation: destinations, activations, what each activation last queued, and its deliveries (an outbox).
-- tenant_id leads every primary key.
CREATE TABLE destinations (
    tenant_id  text NOT NULL,
    name       text NOT NULL,
    config     bytea NOT NULL,          -- the serialized personalization.gateway.v1.Destination, secret included
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE activations (
    tenant_id         text NOT NULL,
    name              text NOT NULL,
    destination       text NOT NULL,
    config            bytea NOT NULL,   -- the serialized personalization.gateway.v1.Activation, without status
    generation        bigint NOT NULL DEFAULT 1,   -- bumped when what is sent changes; a refresh of an old one is dropped
    delivered_rows    bigint NOT NULL DEFAULT 0,
    last_delivered_at timestamptz,
    last_error        text NOT NULL DEFAULT '',
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

-- Per activation and individual: the membership flag and attribute hash most recently queued for delivery.
CREATE TABLE activation_state (
    tenant_id             text NOT NULL,
    activation            text NOT NULL,
    unified_individual_id text NOT NULL,
    member                boolean NOT NULL,
    attributes_hash       text NOT NULL DEFAULT '',
    updated_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, activation, unified_individual_id)
);

-- Per activation and batch job: how far the job's output rows were queued (rows in key order).
CREATE TABLE activation_batch_progress (
    tenant_id  text NOT NULL,
    activation text NOT NULL,
    job_id     text NOT NULL,
    after_key  text[] NOT NULL DEFAULT '{}',   -- (unified_individual_id, point_name) of the last queued row
    done       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, activation, job_id)
);

-- A delivery is recorded (with its rows) in the same transaction that advances the state above, before it is sent;
-- it is sent until it succeeds, always under the same delivery_id, so receivers can deduplicate.
CREATE TABLE deliveries (
    tenant_id       text NOT NULL,
    delivery_id     text NOT NULL,
    activation      text NOT NULL,
    seq             bigint GENERATED ALWAYS AS IDENTITY,
    rows            jsonb NOT NULL,
    row_count       integer NOT NULL,
    state           text NOT NULL DEFAULT 'PENDING',   -- PENDING, DELIVERED, FAILED (permanent: waits for a config change)
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    PRIMARY KEY (tenant_id, delivery_id)
);
CREATE INDEX deliveries_open ON deliveries (tenant_id, activation, seq) WHERE state <> 'DELIVERED';
CREATE INDEX deliveries_delivered ON deliveries (delivered_at) WHERE state = 'DELIVERED';
