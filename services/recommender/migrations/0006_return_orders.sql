-- A return's lines are stored as purchase lines with negative units and revenue; order_id names the purchase
-- (its message_id) whose line of the same item they cancel, when the return said so (NULL otherwise).
ALTER TABLE interactions ADD COLUMN order_id text COLLATE "C";
-- Co-bought looks up the returns of each order line it counts.
CREATE INDEX interactions_returns ON interactions (tenant_id, order_id, item_id) WHERE order_id IS NOT NULL;
