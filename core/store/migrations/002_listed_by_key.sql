-- A group's listed rows by key prefix (`newest_in_group`: an application's runs, keyed
-- `<workflow id>.<run id>`), in byte order whatever the database's collation.
CREATE INDEX documents_listed_by_key ON documents (collection, (key COLLATE "C")) WHERE seq IS NOT NULL;
