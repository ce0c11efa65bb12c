-- Item ids and individual ids use the "C" collation: byte order, so the database and the service break
-- score ties the same way, and comparisons are cheaper.

-- Every interaction recorded once; the primary key is the idempotency key (a re-sent one changes nothing).
CREATE TABLE interactions (
    tenant_id             text COLLATE "C" NOT NULL,
    message_id            text COLLATE "C" NOT NULL,
    item_id               text COLLATE "C" NOT NULL,
    unified_individual_id text COLLATE "C" NOT NULL,
    kind                  text NOT NULL CHECK (kind IN ('product_view', 'add_to_cart', 'purchase')),
    quantity              double precision NOT NULL,
    revenue               double precision NOT NULL,
    event_time            timestamptz NOT NULL,
    recorded_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, message_id, item_id)
);

-- Running totals per item, updated in the same statement that inserts new interactions.
CREATE TABLE item_stats (
    tenant_id           text COLLATE "C" NOT NULL,
    item_id             text COLLATE "C" NOT NULL,
    units_bought        double precision NOT NULL DEFAULT 0,  -- net of returns
    revenue             double precision NOT NULL DEFAULT 0,  -- net of returns
    views               bigint NOT NULL DEFAULT 0,
    carts               bigint NOT NULL DEFAULT 0,
    last_interaction_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, item_id)
);

-- The global rankings are read top-down from these indexes.
CREATE INDEX item_stats_top_sellers ON item_stats (tenant_id, units_bought DESC, item_id);
CREATE INDEX item_stats_most_viewed ON item_stats (tenant_id, views DESC, item_id);

-- What each individual bought, net of returns (one row per item ever bought or returned).
CREATE TABLE individual_items (
    tenant_id             text COLLATE "C" NOT NULL,
    unified_individual_id text COLLATE "C" NOT NULL,
    item_id               text COLLATE "C" NOT NULL,
    units                 double precision NOT NULL,
    revenue               double precision NOT NULL,
    last_purchased_at     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, unified_individual_id, item_id)
);
