-- Trained models of probabilistic (Fellegi-Sunter) rules, versioned per tenant like the recommender's models: m and
-- u per agreement level of each compared field and the prior, for one rule of one ruleset version.
CREATE TABLE match_models (
    tenant_id       text COLLATE "C" NOT NULL,
    version         bigint      NOT NULL,          -- 1, 2, ... per tenant
    ruleset_version int         NOT NULL,
    rule            text        NOT NULL,
    body            jsonb       NOT NULL,          -- {rule, prior, m: [[...]], u: [[...]]}
    summary         jsonb       NOT NULL,          -- records, blocked pairs, EM sessions, seconds
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, version)
);
CREATE INDEX match_models_by_ruleset ON match_models (tenant_id, ruleset_version, rule, version DESC);

-- Which model version merged a pair (0: none, a deterministic rule or a unique identity).
ALTER TABLE merge_events ADD COLUMN model_version bigint NOT NULL DEFAULT 0;
