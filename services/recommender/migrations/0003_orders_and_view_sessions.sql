-- top_sellers ranks by distinct orders and most_viewed by view sessions (units and every view stay, on request).
-- orders: purchase lines with positive units (one line per order and item) less return lines (negative units);
-- view_sessions: views of an item by an individual more than 30 minutes after their previous view of it.
ALTER TABLE item_stats
    ADD COLUMN orders bigint NOT NULL DEFAULT 0,
    ADD COLUMN view_sessions bigint NOT NULL DEFAULT 0;

UPDATE item_stats s SET orders = o.n
FROM (SELECT tenant_id, item_id, sum(sign(quantity))::bigint AS n FROM interactions WHERE kind = 'purchase'
      GROUP BY tenant_id, item_id) o
WHERE s.tenant_id = o.tenant_id AND s.item_id = o.item_id;

UPDATE item_stats s SET view_sessions = v.n
FROM (SELECT tenant_id, item_id, count(*) AS n
      FROM (SELECT tenant_id, item_id, event_time,
                   lag(event_time) OVER (PARTITION BY tenant_id, unified_individual_id, item_id ORDER BY event_time)
                       AS previous
            FROM interactions WHERE kind = 'product_view') t
      WHERE previous IS NULL OR event_time > previous + interval '30 minutes'
      GROUP BY tenant_id, item_id) v
WHERE s.tenant_id = v.tenant_id AND s.item_id = v.item_id;

CREATE INDEX item_stats_orders ON item_stats (tenant_id, orders DESC, item_id);
CREATE INDEX item_stats_view_sessions ON item_stats (tenant_id, view_sessions DESC, item_id);
