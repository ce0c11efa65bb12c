-- Activation control: pausing destinations and activations, the membership change feed's cursor per activation,
-- and the history of failed attempts per delivery (ListDeliveries).
ALTER TABLE destinations ADD COLUMN paused boolean NOT NULL DEFAULT false;

ALTER TABLE activations ADD COLUMN paused boolean NOT NULL DEFAULT false;
-- The profile graph's ListMembershipChanges token after the last change this activation read ('' before the first).
ALTER TABLE activations ADD COLUMN feed_token text NOT NULL DEFAULT '';
-- When this activation last compared the whole segment with what it sent (NULL: never, so the next pass does).
ALTER TABLE activations ADD COLUMN reconciled_at timestamptz;

-- Failed attempts, oldest first, at most the last 20: [{"at": iso time, "error": text}].
ALTER TABLE deliveries ADD COLUMN failures jsonb NOT NULL DEFAULT '[]';
CREATE INDEX deliveries_by_activation ON deliveries (tenant_id, activation, seq);
