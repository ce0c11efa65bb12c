-- Where each batch member's decision context comes from (BatchContextSource names), per job and per schedule.
ALTER TABLE batch_jobs ADD COLUMN context_sources text[] NOT NULL DEFAULT '{}';
ALTER TABLE batch_schedules ADD COLUMN context_sources text[] NOT NULL DEFAULT '{}';
