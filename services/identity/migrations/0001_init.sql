-- Unified individuals. A merged individual keeps its row as an alias: merged_into names the survivor
-- (always directly: chains are flattened on every merge).
CREATE TABLE individuals (
    tenant_id     text        NOT NULL,
    individual_id text        NOT NULL,
    created_at    timestamptz NOT NULL,
    merged_into   text,
    PRIMARY KEY (tenant_id, individual_id),
    FOREIGN KEY (tenant_id, merged_into) REFERENCES individuals (tenant_id, individual_id)
);

-- Aliases of a survivor (GetIndividual, flattening on merge).
CREATE INDEX individuals_by_survivor ON individuals (tenant_id, merged_into) WHERE merged_into IS NOT NULL;

-- Normalized identities; every type is unique (an identity namespace), so (type, value) has one owner,
-- and that owner is always a survivor (a merge moves the merged individual's identities).
CREATE TABLE identities (
    tenant_id     text        NOT NULL,
    id_type       text        NOT NULL,
    id_value      text        NOT NULL,
    individual_id text        NOT NULL,
    first_seen_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id_type, id_value),
    FOREIGN KEY (tenant_id, individual_id) REFERENCES individuals (tenant_id, individual_id)
);

CREATE INDEX identities_by_individual ON identities (tenant_id, individual_id);

-- One row per merge: which individual was folded into which, by which rule, on which evidence.
CREATE TABLE merge_events (
    tenant_id   text        NOT NULL,
    event_id    bigint      GENERATED ALWAYS AS IDENTITY,
    survivor_id text        NOT NULL,
    merged_id   text        NOT NULL,
    rule        text        NOT NULL,
    evidence    jsonb       NOT NULL,
    merged_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, event_id)
);

CREATE INDEX merge_events_by_merged ON merge_events (tenant_id, merged_id);
