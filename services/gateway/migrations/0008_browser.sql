-- Browser access (HTTP/JSON from web pages): the origins each tenant's pages call from, and browser keys.
-- A browser key is public (written into pages): it works only from the tenant's origins and for the few RPCs a
-- page needs (services/gateway/auth.py, BROWSER_METHODS).
ALTER TABLE api_keys ADD COLUMN browser boolean NOT NULL DEFAULT false;

CREATE TABLE browser_origins (
    tenant_id text NOT NULL REFERENCES tenants (tenant_id),
    origin    text NOT NULL,
    PRIMARY KEY (tenant_id, origin)
);
-- A CORS preflight carries no key: whether any tenant allows its origin is looked up by origin.
CREATE INDEX browser_origins_by_origin ON browser_origins (origin);

ALTER TABLE browser_origins ENABLE ROW LEVEL SECURITY;
ALTER TABLE browser_origins FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON browser_origins
    USING (tenant_id = current_setting('tailor.tenant', true) OR current_setting('tailor.all_tenants', true) = 'on');
