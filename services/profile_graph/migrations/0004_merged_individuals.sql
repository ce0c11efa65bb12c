-- Individuals merged into another, so an append that was resolved before the merge (by another pipeline worker)
-- lands on the survivor instead of re-creating the merged profile.
CREATE TABLE merged_individuals (
    tenant_id     text NOT NULL,
    individual_id text NOT NULL,
    survivor_id   text NOT NULL,
    merged_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, individual_id)
);
CREATE INDEX merged_individuals_by_survivor ON merged_individuals (tenant_id, survivor_id);
