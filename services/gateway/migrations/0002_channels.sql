-- Batch personalization, record-sync data model and quotas. tenant_id leads every primary key.
CREATE TABLE batch_jobs (
    tenant_id       text NOT NULL,
    job_id          text NOT NULL,
    segment         text NOT NULL,
    point_names     text[] NOT NULL,
    state           text NOT NULL DEFAULT 'PENDING',   -- PENDING, RUNNING, SUCCEEDED, FAILED
    schedule_name   text NOT NULL DEFAULT '',
    processed_count bigint NOT NULL DEFAULT 0,
    row_count       bigint NOT NULL DEFAULT 0,
    total_count     bigint NOT NULL DEFAULT 0,
    checkpoint      text NOT NULL DEFAULT '',          -- the segment page token after the last committed page
    error           text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    ended_at        timestamptz,
    PRIMARY KEY (tenant_id, job_id)
);
CREATE INDEX batch_jobs_open ON batch_jobs (created_at) WHERE state IN ('PENDING', 'RUNNING');

-- One row per job, individual and point: the primary key makes a resumed page rewrite rows, never add them.
CREATE TABLE batch_results (
    tenant_id             text NOT NULL,
    job_id                text NOT NULL,
    unified_individual_id text NOT NULL,
    point_name            text NOT NULL,
    individual_id         text NOT NULL,
    segment_id            text NOT NULL,
    point_id              text NOT NULL,
    decision_id           text NOT NULL,
    personalization_id    text NOT NULL,
    payload               jsonb NOT NULL,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    seq                   bigint GENERATED ALWAYS AS IDENTITY,   -- write order, for streaming rows to watchers
    PRIMARY KEY (tenant_id, job_id, unified_individual_id, point_name)
);
CREATE INDEX batch_results_seq ON batch_results (tenant_id, job_id, seq);

CREATE TABLE batch_schedules (
    tenant_id   text NOT NULL,
    name        text NOT NULL,
    segment     text NOT NULL,
    point_names text[] NOT NULL,
    cron        text NOT NULL,
    enabled     boolean NOT NULL DEFAULT true,
    next_run_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE data_models (
    tenant_id  text PRIMARY KEY,
    model      bytea NOT NULL,          -- the serialized personalization.gateway.v1.DataModel
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Quotas are set by the operator (`tailor tenant quota`); usage is counted per calendar month.
CREATE TABLE quotas (
    tenant_id             text PRIMARY KEY,
    decision_credit_limit bigint NOT NULL DEFAULT 0,       -- 0: unlimited
    request_rate_limit    double precision NOT NULL DEFAULT 0
);

CREATE TABLE credit_usage (
    tenant_id    text NOT NULL,
    period_start date NOT NULL,
    used         bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, period_start)
);
