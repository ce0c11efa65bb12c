-- Row-level security on every table of this schema with a tenant_id column, enabled and forced (the owner role is
-- bound by it too). A session sees, and may write, the rows of the tenant in its `tailor.tenant` setting (shared/db.py
-- sets it from the call being served at each pool acquire), or every tenant's while `tailor.all_tenants` is 'on'
-- (db.all_tenants(): work that spans tenants, and migrations). A session with neither sees no row and writes none.
DO $$
DECLARE
    t text;
BEGIN
    FOR t IN
        SELECT c.relname FROM pg_class c
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
        WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')
        ORDER BY c.relname
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
                          USING (tenant_id = current_setting('tailor.tenant', true)
                                 OR current_setting('tailor.all_tenants', true) = 'on')$p$, t);
    END LOOP;
END
$$;
