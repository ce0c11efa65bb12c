-- The membership change feed is read in (txid, id) order, and only up to the oldest transaction still running.
-- Ids are assigned when a row is inserted and transactions commit in another order, so a cursor on the id alone could
-- pass a change whose transaction commits after the read, and that change would never be listed. Every transaction
-- below the snapshot's xmin has finished, so a (txid, id) cursor that stops there misses nothing.
ALTER TABLE membership_history ADD COLUMN txid bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint);
CREATE INDEX membership_history_feed ON membership_history (tenant_id, txid, id);
