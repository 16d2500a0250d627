-- Up Migration
-- The backup scrub (docs/design.md §14): a backup's integrity is established when it is written (its sha256 as
-- written is the Image ref's checksum) and re-checked by a scheduled, rate-limited scrub that re-hashes stored
-- backups. verified_at: when the scrub last found the file matching its checksum (NULL: not yet). fault: why the
-- backup cannot be trusted (NULL: nothing known against it): its own file did not match, or a backup below it in
-- its chain did not. A faulty backup is never a delta's parent (the next backup of the volume is a full one) and
-- restores of it are refused; its file is kept for the operator.
ALTER TABLE snapshot_store_ref ADD COLUMN verified_at timestamptz;
ALTER TABLE snapshot_store_ref ADD COLUMN fault text;
-- The scrub walks Ready Image refs least recently verified first.
CREATE INDEX snapshot_store_ref_scrub_idx ON snapshot_store_ref(verified_at NULLS FIRST, id) WHERE store_role = 'Image' AND state = 'Ready';

-- Down Migration
DROP INDEX snapshot_store_ref_scrub_idx;
ALTER TABLE snapshot_store_ref DROP COLUMN fault;
ALTER TABLE snapshot_store_ref DROP COLUMN verified_at;
