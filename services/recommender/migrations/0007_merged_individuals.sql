-- Individuals merged into another (merged id -> survivor, chains collapsed: a survivor is never itself merged), so
-- interactions recorded for a merged id after its merge (a chunk identified before it, a retry) land on the survivor,
-- and a merge applied late onto a merged-away target goes on to that target's survivor, as in the profile graph.
-- An unmerge removes the restored individual's row.
CREATE TABLE merged_individuals (
    tenant_id     text COLLATE "C" NOT NULL,
    individual_id text COLLATE "C" NOT NULL,
    survivor_id   text COLLATE "C" NOT NULL,
    merged_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, individual_id)
);
CREATE INDEX merged_individuals_by_survivor ON merged_individuals (tenant_id, survivor_id);

ALTER TABLE merged_individuals ENABLE ROW LEVEL SECURITY;
ALTER TABLE merged_individuals FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON merged_individuals
    USING (tenant_id = current_setting('tailor.tenant', true) OR current_setting('tailor.all_tenants', true) = 'on');
