-- Up Migration
-- Fenced backup attempts (docs/design.md §5). After a heartbeat timeout two executions of one backup can run at
-- once; each takes the next value of backup_fence when it begins (activities/snapshot-activities.ts), and every
-- write it makes afterwards (the Image ref it plans, the rename of its file into place, the Ready ref with
-- BackedUp, a failed copy) happens only while the row still holds its value (db/snapshots.ts). A superseded
-- execution stops without writing anything; its temporary file carries its token, so a newer one removes only
-- those of older tokens.
ALTER TABLE snapshots ADD COLUMN backup_fence integer NOT NULL DEFAULT 0;
-- A failed copy is recorded, with its event, before the failure is reported: a re-delivery of the same workflow
-- attempt (its worker died before Temporal heard of the failure) replays the failure instead of copying again,
-- so the failure still counts toward backup.max.attempts.
ALTER TABLE snapshots ADD COLUMN backup_failed_attempt integer;
ALTER TABLE snapshots ADD COLUMN backup_failed_error text;

-- Down Migration
ALTER TABLE snapshots DROP COLUMN backup_failed_error;
ALTER TABLE snapshots DROP COLUMN backup_failed_attempt;
ALTER TABLE snapshots DROP COLUMN backup_fence;
