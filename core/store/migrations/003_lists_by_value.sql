-- Lists by value (`list_by`): each listed row's value of each listed field, numbered when the
-- row took it, so a page of "the orders whose status is completed" is an index range.
ALTER TABLE documents ADD COLUMN listed jsonb NOT NULL DEFAULT '{}'::jsonb;  -- the row's values in the lists
CREATE SEQUENCE listed_values_entered;
CREATE TABLE listed_values (
    collection text NOT NULL,
    field text NOT NULL,
    key text NOT NULL,
    value text NOT NULL,
    entered bigint NOT NULL,
    PRIMARY KEY (collection, field, key)
);
CREATE INDEX listed_values_page ON listed_values (collection, field, value, entered DESC);
-- The collections whose lists cover every listed row, and for which fields: a collection written
-- before these lists (or listed by other fields since) gets them at its first `list_by`.
CREATE TABLE list_coverage (
    collection text PRIMARY KEY,
    fields jsonb NOT NULL
);
