-- Tenants, API keys, the ingest inbox and its dead letters. tenant_id leads every primary key.
CREATE TABLE tenants (
    tenant_id    text PRIMARY KEY,
    display_name text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    tenant_id    text NOT NULL REFERENCES tenants (tenant_id),
    key_id       text NOT NULL,
    secret_hash  bytea NOT NULL,          -- sha256 of the secret; the secret itself is never stored
    scopes       text[] NOT NULL,
    display_name text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    PRIMARY KEY (tenant_id, key_id)
);
-- Authentication knows only the key, not the tenant: the key id is globally unique.
CREATE UNIQUE INDEX api_keys_key_id ON api_keys (key_id);

-- An event is acknowledged once its row is committed here; the pipeline worker drains it in seq order.
CREATE TABLE inbox (
    tenant_id    text NOT NULL,
    message_id   text NOT NULL,
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    payload      bytea NOT NULL,          -- the serialized personalization.common.v1.Event
    received_at  timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text,
    PRIMARY KEY (tenant_id, message_id)
);
CREATE INDEX inbox_pending ON inbox (seq) WHERE processed_at IS NULL;

CREATE TABLE dead_letters (
    tenant_id  text NOT NULL,
    message_id text NOT NULL,
    payload    bytea NOT NULL,
    error      text NOT NULL,
    attempts   integer NOT NULL,
    failed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, message_id)
);
