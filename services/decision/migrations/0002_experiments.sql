-- Archiving: archived points are refused by Qualify, archived decisions are neither evaluated nor forced.
ALTER TABLE points ADD COLUMN archived boolean NOT NULL DEFAULT false;
ALTER TABLE decisions ADD COLUMN archived boolean NOT NULL DEFAULT false;

-- The tenant's declared profile schema, which rules are checked against when saved.
CREATE TABLE profile_schemas (
    tenant_id  text        NOT NULL,
    schema     jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id)
);

-- Experiments on points; config holds cohorts, metrics, thresholds and durations.
CREATE TABLE experiments (
    tenant_id        text        NOT NULL,
    experiment_id    text        NOT NULL,
    name             text        NOT NULL,
    point_name       text        NOT NULL,
    state            text        NOT NULL,
    config           jsonb       NOT NULL,
    winner_cohort_id text        NOT NULL DEFAULT '',
    start_time       timestamptz,
    stop_time        timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, experiment_id),
    UNIQUE (tenant_id, name)
);

-- At most one running experiment per point, also under concurrent starts.
CREATE UNIQUE INDEX experiments_one_running ON experiments (tenant_id, point_name) WHERE state = 'RUNNING';

-- Decision log rows carry the experiment and cohort served, the merge conflict flag and the items served.
ALTER TABLE decision_log ADD COLUMN experiment_id text NOT NULL DEFAULT '';
ALTER TABLE decision_log ADD COLUMN cohort_id text NOT NULL DEFAULT '';
ALTER TABLE decision_log ADD COLUMN exposure_conflict boolean NOT NULL DEFAULT false;
ALTER TABLE decision_log ADD COLUMN item_ids text[] NOT NULL DEFAULT '{}';
CREATE INDEX decision_log_by_experiment ON decision_log (tenant_id, experiment_id, unified_individual_id)
    WHERE experiment_id <> '';

-- Merged-away unified ids and the survivor they now belong to (chains are collapsed on each merge).
CREATE TABLE individual_aliases (
    tenant_id   text        NOT NULL,
    alias_id    text        NOT NULL,
    survivor_id text        NOT NULL,
    merged_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, alias_id)
);
CREATE INDEX individual_aliases_by_survivor ON individual_aliases (tenant_id, survivor_id);

-- Individuals whose merged identities saw different cohorts of an experiment: flagged and excluded from results.
CREATE TABLE experiment_conflicts (
    tenant_id             text NOT NULL,
    experiment_id         text NOT NULL,
    unified_individual_id text NOT NULL,
    PRIMARY KEY (tenant_id, experiment_id, unified_individual_id)
);

-- Clicks and purchases the pipeline reports, for attribution and experiment results; idempotent by outcome_id.
CREATE TABLE outcomes (
    tenant_id             text             NOT NULL,
    outcome_id            text             NOT NULL,
    unified_individual_id text             NOT NULL,
    type                  text             NOT NULL,
    time                  timestamptz      NOT NULL,
    item_ids              text[]           NOT NULL DEFAULT '{}',
    revenue               double precision NOT NULL DEFAULT 0,
    personalization_id    text             NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, outcome_id)
);
CREATE INDEX outcomes_by_individual ON outcomes (tenant_id, unified_individual_id, time);
CREATE INDEX outcomes_by_time ON outcomes (tenant_id, time);
