-- The profile graph's schema: events, unified attributes, insights, segments, memberships and items.

-- Every individual the service has seen (ids in byte order, for stable paging), and when its profile last changed.
CREATE TABLE individuals (
    tenant_id     text        NOT NULL,
    individual_id text        COLLATE "C" NOT NULL,
    update_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, individual_id)
);

-- Engagement events, stored once per message id; payload is the serialized common.v1.Event.
CREATE TABLE events (
    tenant_id     text             NOT NULL,
    message_id    text             NOT NULL,
    individual_id text             NOT NULL,
    type          smallint         NOT NULL,
    event_time    timestamptz      NOT NULL,
    revenue       double precision NOT NULL DEFAULT 0,
    quantity      double precision NOT NULL DEFAULT 0,
    item_id       text             NOT NULL DEFAULT '',
    properties    jsonb,
    payload       bytea            NOT NULL,
    append_time   timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, message_id)
);
CREATE INDEX events_by_individual_time ON events (tenant_id, individual_id, event_time DESC);

-- Unified attributes, one row per key, with the event time of the value that won.
CREATE TABLE attributes (
    tenant_id     text        NOT NULL,
    individual_id text        NOT NULL,
    key           text        NOT NULL,
    value         jsonb       NOT NULL,
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, individual_id, key)
);

-- Calculated insight definitions; window_us = 0 means all time.
CREATE TABLE insights (
    tenant_id   text     NOT NULL,
    name        text     NOT NULL,
    description text     NOT NULL DEFAULT '',
    aggregate   smallint NOT NULL,
    field       text     NOT NULL DEFAULT '',
    event_type  smallint NOT NULL DEFAULT 0,
    window_us   bigint   NOT NULL DEFAULT 0,
    update_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

-- Current insight values per individual.
CREATE TABLE insight_values (
    tenant_id     text             NOT NULL,
    individual_id text             NOT NULL,
    name          text             NOT NULL,
    value         double precision NOT NULL,
    PRIMARY KEY (tenant_id, individual_id, name)
);

-- Segment definitions (CEL rules).
CREATE TABLE segments (
    tenant_id   text        NOT NULL,
    name        text        NOT NULL,
    description text        NOT NULL DEFAULT '',
    rule        text        NOT NULL,
    update_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

-- Current memberships; the key order (ids in byte order) serves ListSegmentMembers, the index serves profiles.
CREATE TABLE memberships (
    tenant_id     text        NOT NULL,
    segment       text        NOT NULL,
    individual_id text        COLLATE "C" NOT NULL,
    enter_time    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, segment, individual_id)
);
CREATE INDEX memberships_by_individual ON memberships (tenant_id, individual_id);

-- Every entry into and exit from a segment.
CREATE TABLE membership_history (
    tenant_id     text        NOT NULL,
    id            bigint      GENERATED ALWAYS AS IDENTITY,
    segment       text        NOT NULL,
    individual_id text        NOT NULL,
    change        text        NOT NULL CHECK (change IN ('entered', 'exited')),
    change_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX membership_history_by_individual ON membership_history (tenant_id, individual_id, change_time);

-- Catalog items.
CREATE TABLE items (
    tenant_id   text        NOT NULL,
    item_id     text        NOT NULL,
    name        text        NOT NULL DEFAULT '',
    attributes  jsonb       NOT NULL DEFAULT '{}',
    update_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, item_id)
);
