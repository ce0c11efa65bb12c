-- Experiment layers (GrowthBook namespaces): an experiment may claim a slice [layer_start, layer_end) of a layer, in
-- basis points. Running experiments of one layer claim disjoint slices (checked under an advisory lock per layer).
ALTER TABLE experiments ADD COLUMN layer       text    NOT NULL DEFAULT '',
                        ADD COLUMN layer_start integer NOT NULL DEFAULT 0,
                        ADD COLUMN layer_end   integer NOT NULL DEFAULT 0;

-- A point may run several experiments (in different layers, or in disjoint slices of one), but at most one outside
-- any layer, also under concurrent starts.
DROP INDEX experiments_one_running;
CREATE UNIQUE INDEX experiments_one_running_unlayered ON experiments (tenant_id, point_name)
    WHERE state = 'RUNNING' AND layer = '';
CREATE INDEX experiments_running_by_layer ON experiments (tenant_id, layer) WHERE state = 'RUNNING' AND layer <> '';

-- Rows served to an individual of the tenant's holdout (only the point's default).
ALTER TABLE decision_log ADD COLUMN holdout boolean NOT NULL DEFAULT false;

-- The tenant's holdout: the share of individuals (basis points) who get only defaults, and its hash seed.
CREATE TABLE holdouts (
    tenant_id    text        NOT NULL PRIMARY KEY,
    fraction_bps integer     NOT NULL,
    seed         text        NOT NULL DEFAULT '',
    updated_at   timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE holdouts ENABLE ROW LEVEL SECURITY;
ALTER TABLE holdouts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON holdouts
    USING (tenant_id = current_setting('tailor.tenant', true) OR current_setting('tailor.all_tenants', true) = 'on');
