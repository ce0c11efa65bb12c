-- What each individual did with each item: views join purchases, so one indexed read gives the history
-- the profile filters and the personal strategies need.
ALTER TABLE individual_items
    ALTER COLUMN last_purchased_at DROP NOT NULL,
    ADD COLUMN bought boolean NOT NULL DEFAULT true,
    ADD COLUMN views bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_viewed_at timestamptz;
ALTER TABLE individual_items ALTER COLUMN bought SET DEFAULT false;

-- Co-occurrence reads: the anchor's interactions by item, and an individual's views by time (sessions).
CREATE INDEX interactions_by_item ON interactions (tenant_id, item_id, kind);
CREATE INDEX interactions_by_individual ON interactions (tenant_id, unified_individual_id, event_time);
-- Windowed rankings and trending read recent interactions.
CREATE INDEX interactions_by_time ON interactions (tenant_id, event_time);

-- The catalog as the recommender sees it (fed by the gateway's fan-out of item upserts).
CREATE TABLE items (
    tenant_id   text COLLATE "C" NOT NULL,
    item_id     text COLLATE "C" NOT NULL,
    attributes  jsonb NOT NULL DEFAULT '{}',
    create_time timestamptz NOT NULL,
    update_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, item_id)
);

-- Named recommender configs; config holds the domain config as JSON.
CREATE TABLE recommenders (
    tenant_id          text COLLATE "C" NOT NULL,
    name               text COLLATE "C" NOT NULL,
    config             jsonb NOT NULL,
    retrain_seconds    double precision NOT NULL DEFAULT 0,
    training_claimed_at timestamptz,
    update_time        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

-- Trained model versions of learned recommenders; every replica loads the newest.
CREATE TABLE models (
    tenant_id   text COLLATE "C" NOT NULL,
    recommender text COLLATE "C" NOT NULL,
    version     bigint NOT NULL,
    payload     bytea NOT NULL,
    summary     jsonb NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, recommender, version)
);
