-- Next best promotion: a point's bandit configuration (NULL: rules by priority), the trials in the decision log and
-- each offer's counters per segment.
ALTER TABLE points ADD COLUMN bandit jsonb;

-- A row the bandit chose is a trial: bandit_segment is its posteriors' segment ('' for the global ones; NULL means
-- not a trial). The counters say what outcomes credited it, so an offer counts a trial's first click or purchase once.
ALTER TABLE decision_log ADD COLUMN bandit_segment text,
                         ADD COLUMN bandit_clicks integer NOT NULL DEFAULT 0,
                         ADD COLUMN bandit_conversions integer NOT NULL DEFAULT 0,
                         ADD COLUMN bandit_revenue double precision NOT NULL DEFAULT 0;

-- An individual's trials, for crediting purchases and unnamed clicks to the last one of each point.
CREATE INDEX decision_log_bandit_trials ON decision_log (tenant_id, unified_individual_id, log_time)
    WHERE bandit_segment IS NOT NULL;

-- Each offer's counters, per point and segment, shared by every replica; only ever incremented in place
-- (INSERT ... ON CONFLICT DO UPDATE SET x = x + ...), so concurrent writers lose no update.
CREATE TABLE bandit_arms (
    tenant_id   text             NOT NULL,
    point_name  text             NOT NULL,
    segment     text             NOT NULL,
    decision_id text             NOT NULL,
    trials      bigint           NOT NULL DEFAULT 0,
    clicks      bigint           NOT NULL DEFAULT 0,
    conversions bigint           NOT NULL DEFAULT 0,
    revenue     double precision NOT NULL DEFAULT 0,
    revenue_sq  double precision NOT NULL DEFAULT 0,
    updated_at  timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, point_name, segment, decision_id)
);

-- Row-level security as on every other table (0004_row_level_security.sql).
ALTER TABLE bandit_arms ENABLE ROW LEVEL SECURITY;
ALTER TABLE bandit_arms FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON bandit_arms
    USING (tenant_id = current_setting('tailor.tenant', true) OR current_setting('tailor.all_tenants', true) = 'on');
