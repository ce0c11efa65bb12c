-- Interactions move to the survivor of a merge; first_individual_id keeps the individual they were recorded for
-- (NULL: the one they are still under), so an unmerge can move them back. No backfill: NULL means unmoved.
ALTER TABLE interactions ADD COLUMN first_individual_id text COLLATE "C";
