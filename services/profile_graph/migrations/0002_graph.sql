-- The profile data graph: event details kept for rebuilds, per-source attribute values, profile objects, consents,
-- affinities, grouped and item insights, reconciliation rules, and an append sequence for live streams.

-- What a rebuild from events needs, plus an append sequence (live streams read events after the last one seen).
ALTER TABLE events
    ADD COLUMN name          text   NOT NULL DEFAULT '',
    ADD COLUMN source        text   NOT NULL DEFAULT '',
    ADD COLUMN lines         jsonb,
    ADD COLUMN attributes    jsonb,
    ADD COLUMN consents      jsonb,
    ADD COLUMN objects       jsonb,
    ADD COLUMN item_ids      text[] NOT NULL DEFAULT '{}',
    ADD COLUMN identity_keys text[] NOT NULL DEFAULT '{}',
    ADD COLUMN seq           bigint GENERATED ALWAYS AS IDENTITY;
CREATE INDEX events_by_individual_seq ON events (tenant_id, individual_id, seq);
CREATE INDEX events_by_item ON events USING gin (item_ids);

-- Every value each source sent for each attribute: how often and when last (reconciliation rules choose from these).
CREATE TABLE attribute_values (
    tenant_id     text        NOT NULL,
    individual_id text        NOT NULL,
    key           text        NOT NULL,
    source        text        NOT NULL,
    value         text        NOT NULL,
    count         bigint      NOT NULL,
    last_at       timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, individual_id, key, source, value)
);

-- Insight definitions gain conditions, a dimension and a subject (1 individual, 2 item).
ALTER TABLE insights
    ADD COLUMN conditions jsonb    NOT NULL DEFAULT '[]',
    ADD COLUMN dimension  text     NOT NULL DEFAULT '',
    ADD COLUMN subject    smallint NOT NULL DEFAULT 1;

-- Insight values carry the dimension value ('' when the insight is not grouped).
ALTER TABLE insight_values ADD COLUMN dimension text NOT NULL DEFAULT '';
ALTER TABLE insight_values DROP CONSTRAINT insight_values_pkey;
ALTER TABLE insight_values ADD PRIMARY KEY (tenant_id, individual_id, name, dimension);

-- Item insight values.
CREATE TABLE item_insight_values (
    tenant_id text             NOT NULL,
    item_id   text             NOT NULL,
    name      text             NOT NULL,
    value     double precision NOT NULL,
    PRIMARY KEY (tenant_id, item_id, name)
);

-- The type of each item attribute, fixed by the first item that carries it.
CREATE TABLE item_attribute_types (
    tenant_id text NOT NULL,
    name      text NOT NULL,
    type      text NOT NULL CHECK (type IN ('string', 'number', 'bool', 'timestamp', 'string_list')),
    PRIMARY KEY (tenant_id, name)
);

-- Profile objects (orders, cases, ...): an object id belongs to one individual; at most N kept per type.
CREATE TABLE profile_objects (
    tenant_id     text        NOT NULL,
    type          text        NOT NULL,
    object_id     text        NOT NULL,
    individual_id text        NOT NULL,
    attributes    jsonb       NOT NULL,
    updated_at    timestamptz NOT NULL,
    source        text        NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, type, object_id)
);
CREATE INDEX profile_objects_by_individual ON profile_objects (tenant_id, individual_id, type, updated_at DESC);

-- The latest consent decision per purpose (from_api: set through SetConsents rather than an event).
CREATE TABLE consents (
    tenant_id     text        NOT NULL,
    individual_id text        NOT NULL,
    purpose       text        NOT NULL,
    status        smallint    NOT NULL,
    updated_at    timestamptz NOT NULL,
    source        text        NOT NULL DEFAULT '',
    from_api      boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, individual_id, purpose)
);

-- Affinity scores: score is valid at as_of and decays with the configured half-life from there.
CREATE TABLE affinities (
    tenant_id     text             NOT NULL,
    individual_id text             NOT NULL,
    dimension     text             NOT NULL,
    value         text             NOT NULL,
    score         double precision NOT NULL,
    as_of         timestamptz      NOT NULL,
    PRIMARY KEY (tenant_id, individual_id, dimension, value)
);

-- Per-tenant configuration documents: affinity settings and reconciliation rules (JSON).
CREATE TABLE graph_config (
    tenant_id text  NOT NULL,
    kind      text  NOT NULL,
    document  jsonb NOT NULL,
    PRIMARY KEY (tenant_id, kind)
);
