-- Consent purposes a point or decision needs, points served only to known individuals, batch-decided log rows.
ALTER TABLE points ADD COLUMN consent_purpose text NOT NULL DEFAULT '',
                   ADD COLUMN requires_authentication boolean NOT NULL DEFAULT false;
ALTER TABLE decisions ADD COLUMN consent_purpose text NOT NULL DEFAULT '';
ALTER TABLE decision_log ADD COLUMN batch_job_id text NOT NULL DEFAULT '';
