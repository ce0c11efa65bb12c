-- Model payloads are numpy arrays of floats that do not compress: PostgreSQL's default storage tried pglz on every
-- one (0.18 of the 0.25 s of backend CPU an 11 MB model's insert took) and then stored it uncompressed anyway.
-- EXTERNAL stores them out of line without trying; rows written before keep their storage.
ALTER TABLE models ALTER COLUMN payload SET STORAGE EXTERNAL;
