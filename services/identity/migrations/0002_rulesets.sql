-- Identity types a tenant added or overrode (the built-ins need no row).
CREATE TABLE identity_types (
    tenant_id      text    NOT NULL,
    name           text    NOT NULL,
    is_unique      boolean NOT NULL,
    normalization  text    NOT NULL,
    default_region text    NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, name)
);

-- Versioned match rulesets; the highest version is active (none: the built-in default).
CREATE TABLE rulesets (
    tenant_id  text        NOT NULL,
    version    integer     NOT NULL,
    body       jsonb       NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, version)
);

-- Source records: each distinct subject seen (normalized identities and attributes), with its current survivor
-- and the individual it was first stored under (unmerge sends it back there). A full re-run reads only these.
CREATE TABLE source_records (
    tenant_id            text        NOT NULL,
    record_id            text        NOT NULL,
    individual_id        text        NOT NULL,
    origin_individual_id text        NOT NULL,
    identities           jsonb       NOT NULL,
    attributes           jsonb       NOT NULL,
    created_at           timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, record_id)
);

CREATE INDEX source_records_by_individual ON source_records (tenant_id, individual_id);

-- The blocking index of the active ruleset: only records sharing a key are compared.
CREATE TABLE record_blocks (
    tenant_id text NOT NULL,
    block_key text NOT NULL,
    record_id text NOT NULL,
    PRIMARY KEY (tenant_id, block_key, record_id)
);

-- Identities of types that are not unique (searchable only), by the record that carried them.
CREATE TABLE shared_identities (
    tenant_id text NOT NULL,
    id_type   text NOT NULL,
    id_value  text NOT NULL,
    record_id text NOT NULL,
    PRIMARY KEY (tenant_id, id_type, id_value, record_id)
);

CREATE INDEX shared_identities_by_record ON shared_identities (tenant_id, record_id);

-- Pairs split by an unmerge (stored both ways); their survivors are never merged again.
CREATE TABLE separations (
    tenant_id     text NOT NULL,
    individual_id text NOT NULL,
    other_id      text NOT NULL,
    PRIMARY KEY (tenant_id, individual_id, other_id)
);

ALTER TABLE individuals ADD COLUMN record_count bigint NOT NULL DEFAULT 0;
ALTER TABLE identities ADD COLUMN origin_individual_id text;
UPDATE identities SET origin_individual_id = individual_id;
ALTER TABLE identities ALTER COLUMN origin_individual_id SET NOT NULL;
ALTER TABLE merge_events ADD COLUMN kind text NOT NULL DEFAULT 'MERGE';
ALTER TABLE merge_events ADD COLUMN reason text NOT NULL DEFAULT '';
CREATE INDEX merge_events_by_survivor ON merge_events (tenant_id, survivor_id);

-- Individuals stored before source records existed get one record holding their identities.
INSERT INTO source_records (tenant_id, record_id, individual_id, origin_individual_id, identities, attributes, created_at)
SELECT i.tenant_id, 'rec_legacy_' || i.individual_id, i.individual_id, i.individual_id,
       jsonb_object_agg(i.id_type, i.vals), '{}'::jsonb, min(i.first_seen)
FROM (SELECT tenant_id, individual_id, id_type, jsonb_agg(id_value ORDER BY id_value) AS vals,
             min(first_seen_at) AS first_seen
      FROM identities GROUP BY tenant_id, individual_id, id_type) AS i
GROUP BY i.tenant_id, i.individual_id;
UPDATE individuals AS n SET record_count = 1
WHERE EXISTS (SELECT 1 FROM source_records AS r WHERE r.tenant_id = n.tenant_id AND r.individual_id = n.individual_id);
