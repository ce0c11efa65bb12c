-- Which events name which items, one row per (event, item): the lookup of an item's events for item insights.
-- A GIN index on events.item_ids served it until row-level security: PostgreSQL never uses a non-leakproof operator
-- such as && as an index condition on a table with a policy, so `item_ids && $2` became a scan of the tenant's
-- events. Equality on text is leakproof, so this table's primary key keeps the lookup an index scan.
CREATE TABLE event_items (
    tenant_id  text NOT NULL,
    item_id    text NOT NULL,
    message_id text NOT NULL,
    PRIMARY KEY (tenant_id, item_id, message_id),
    -- Erasing an event (ForgetIndividual) erases its rows here.
    FOREIGN KEY (tenant_id, message_id) REFERENCES events (tenant_id, message_id) ON DELETE CASCADE
);
CREATE INDEX event_items_by_event ON event_items (tenant_id, message_id);

INSERT INTO event_items (tenant_id, item_id, message_id)
SELECT DISTINCT tenant_id, unnest(item_ids), message_id FROM events
ON CONFLICT DO NOTHING;

DROP INDEX events_by_item;

ALTER TABLE event_items ENABLE ROW LEVEL SECURITY;
ALTER TABLE event_items FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON event_items
    USING (tenant_id = current_setting('tailor.tenant', true) OR current_setting('tailor.all_tenants', true) = 'on');
