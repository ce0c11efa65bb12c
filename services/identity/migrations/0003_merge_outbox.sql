-- Merges and unmerges are an outbox for the rest of the suite: the gateway applies each to the profile graph and
-- the decision service, then marks it propagated. Rows left unmarked (a crash in between) are applied again.
ALTER TABLE merge_events ADD COLUMN propagated_at timestamptz;
CREATE INDEX merge_events_unpropagated ON merge_events (tenant_id, event_id)
    WHERE propagated_at IS NULL AND kind IN ('MERGE', 'UNMERGE');
