-- Documents as jsonb, one row per (collection, key); `seq` numbers the listed ones
-- (written with a sort key) so a page newest first is an index range, not a sort.
CREATE TABLE documents (
    collection text NOT NULL,
    key text NOT NULL,
    doc jsonb NOT NULL,
    seq bigint,
    counted jsonb NOT NULL DEFAULT '{}'::jsonb,  -- the values this row is counted under
    PRIMARY KEY (collection, key)
);
CREATE UNIQUE INDEX documents_listing ON documents (collection, seq DESC) WHERE seq IS NOT NULL;

-- How many listed rows each collection has: the next `seq`, and the page's total without count(*).
CREATE TABLE collection_totals (
    collection text PRIMARY KEY,
    total bigint NOT NULL
);

-- Counts by field value, moved in the same transaction as the row.
CREATE TABLE field_counts (
    collection text NOT NULL,
    field text NOT NULL,
    value text NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (collection, field, value)
);
