-- event_items rows are written only from the events inserted by the same statement (postgres_sql._INSERT_EVENTS) and
-- erased with them (PostgresPrivacy.erase deletes an erased event's rows first), so the foreign key checked nothing
-- those two did not already ensure; its check, one trigger call and one row lock on the new event per inserted row,
-- cost an append more than the rows themselves.
ALTER TABLE event_items DROP CONSTRAINT IF EXISTS event_items_tenant_id_message_id_fkey;
