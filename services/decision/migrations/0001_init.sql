-- Personalization points with their response templates; point_id is stable across upserts of the same name.
CREATE TABLE points (
    tenant_id   text        NOT NULL,
    point_id    text        NOT NULL,
    name        text        NOT NULL,
    description text        NOT NULL DEFAULT '',
    type        text        NOT NULL,
    template    jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, point_id),
    UNIQUE (tenant_id, name)
);

-- Decisions on a point: a CEL rule, a priority and either manual content or a recommender call.
CREATE TABLE decisions (
    tenant_id   text        NOT NULL,
    decision_id text        NOT NULL,
    point_id    text        NOT NULL,
    name        text        NOT NULL,
    priority    integer     NOT NULL DEFAULT 0,
    rule        text        NOT NULL DEFAULT '',
    fallback    boolean     NOT NULL DEFAULT false,
    content     jsonb,
    recommender text        NOT NULL DEFAULT '',
    item_count  integer     NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, decision_id),
    UNIQUE (tenant_id, point_id, name),
    FOREIGN KEY (tenant_id, point_id) REFERENCES points (tenant_id, point_id)
);

CREATE INDEX decisions_by_priority ON decisions (tenant_id, point_id, priority DESC, name);

-- One row per personalization served; idempotent by personalization_id.
CREATE TABLE decision_log (
    tenant_id             text        NOT NULL,
    personalization_id    text        NOT NULL,
    request_id            text        NOT NULL DEFAULT '',
    point_id              text        NOT NULL DEFAULT '',
    point_name            text        NOT NULL,
    decision_id           text        NOT NULL DEFAULT '',
    unified_individual_id text        NOT NULL DEFAULT '',
    channel               text        NOT NULL DEFAULT '',
    correlation_id        text        NOT NULL DEFAULT '',
    anchor_id             text        NOT NULL DEFAULT '',
    served                jsonb       NOT NULL DEFAULT '{}',
    stage_ms              jsonb       NOT NULL DEFAULT '{}',
    log_time              timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, personalization_id)
);

CREATE INDEX decision_log_newest ON decision_log (tenant_id, log_time DESC, personalization_id DESC);
CREATE INDEX decision_log_by_individual
    ON decision_log (tenant_id, unified_individual_id, log_time DESC, personalization_id DESC);
