-- Up Migration
-- Incremental backups (docs/design.md §14). The settings a snapshot was requested with travel in its workflow
-- input and its row, like the retry settings; NULL for snapshots requested before them: a full backup.
ALTER TABLE snapshots ADD COLUMN backup_incremental boolean;
ALTER TABLE snapshots ADD COLUMN snapshot_delta_max integer CHECK (snapshot_delta_max > 0);
-- An Image ref's backup may be a delta on the backup of an earlier snapshot of the same volume in the same store
-- (CloudStack's snapshot_store_ref.parent_snapshot_id); chain_length counts the files a restore reads (1: full).
-- The parent is recorded when a backup attempt starts (state Creating), so nothing removes a parent while a
-- delta on it is being written.
ALTER TABLE snapshot_store_ref ADD COLUMN parent_snapshot_id uuid REFERENCES snapshots(id);
ALTER TABLE snapshot_store_ref ADD COLUMN chain_length integer NOT NULL DEFAULT 1 CHECK (chain_length > 0);
CREATE INDEX snapshot_store_ref_parent_idx ON snapshot_store_ref(parent_snapshot_id) WHERE parent_snapshot_id IS NOT NULL;

-- Down Migration
DROP INDEX snapshot_store_ref_parent_idx;
ALTER TABLE snapshot_store_ref DROP COLUMN chain_length;
ALTER TABLE snapshot_store_ref DROP COLUMN parent_snapshot_id;
ALTER TABLE snapshots DROP COLUMN snapshot_delta_max;
ALTER TABLE snapshots DROP COLUMN backup_incremental;
