-- The right to be forgotten: tombstones of forgotten individuals. A tombstone is a salted SHA-256 of a normalized
-- unique identity ("type\x1fvalue") or of a forgotten unified id ("\x00individual\x1fid"), never the value itself:
-- subjects carrying a tombstoned identity resolve as suppressed (their events are dropped) until an admin lifts it.
CREATE TABLE suppression_salts (
    tenant_id text  PRIMARY KEY,
    salt      bytea NOT NULL          -- 32 random bytes, made at the tenant's first forget
);

CREATE TABLE suppressions (
    tenant_id  text        NOT NULL,
    value_hash bytea       NOT NULL,
    kind       text        NOT NULL CHECK (kind IN ('identity', 'individual')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, value_hash)
);
