-- Up Migration
-- Keyset paging of GET /api/v1/snapshots (db/snapshots.ts listSnapshots) reads in (created, id) order: per account
-- (a user), per volume (volumeId filter) and over every account (an admin). Without an index in that order each
-- page read every matching row and sorted them (bench P6: 14 ms for an account's first page at 100k snapshots, 128 ms
-- for an admin's, a parallel sequential scan; the same for any deep page, since `after` was only a filter). With
-- these a page walks the index from its cursor ((created, id) > (…) is an index condition) and stops after `limit`.
CREATE INDEX snapshots_account_created_idx ON snapshots(account_id, created, id);
CREATE INDEX snapshots_volume_created_idx ON snapshots(volume_id, created, id);
CREATE INDEX snapshots_created_idx ON snapshots(created, id);
-- The volume index above has volume_id first: it serves every lookup the old one did (and latestBackupOfVolume's
-- newest-first order, read backwards).
DROP INDEX snapshots_volume_idx;

-- Down Migration
CREATE INDEX snapshots_volume_idx ON snapshots(volume_id);
DROP INDEX snapshots_created_idx;
DROP INDEX snapshots_volume_created_idx;
DROP INDEX snapshots_account_created_idx;
