-- Batch output payloads are stored as json, not jsonb: parsing a page's 1,000 payloads into jsonb was about half
-- of PostgreSQL's time writing the page, and every reader (results, watchers, exports) parses the text anyway.
ALTER TABLE batch_results ALTER COLUMN payload TYPE json USING payload::json;
