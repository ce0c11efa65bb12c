-- SuppressIndividual deletes the individual's identities and records at once (so nothing resolves to it any more)
-- and keeps only its individuals rows until EraseIndividual: meanwhile each tombstone names the individual, so a
-- forget that failed half-way is found again by any of its identities. EraseIndividual clears the name.
ALTER TABLE suppressions ADD COLUMN pending_individual text;
CREATE INDEX suppressions_pending ON suppressions (tenant_id, pending_individual) WHERE pending_individual IS NOT NULL;
