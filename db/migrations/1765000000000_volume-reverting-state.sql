-- Up Migration

-- A revert from a backup (the snapshot's primary copy gone) rewrites the whole volume: it no longer runs inside
-- the transaction that holds the row locks. The volume is committed Reverting with its `pending` record first,
-- the copy runs outside any transaction, and the result is committed after; a crash in between is settled by
-- the reconciler (services/volume-reconcile.ts), like migrate, resize and a new volume from a snapshot.
ALTER TABLE volumes DROP CONSTRAINT volumes_state_check;
ALTER TABLE volumes ADD CONSTRAINT volumes_state_check
  CHECK (state IN ('Allocated', 'Creating', 'Ready', 'Migrating', 'Resizing', 'Reverting', 'Error', 'Destroyed'));
DROP INDEX volumes_transitional_idx;
CREATE INDEX volumes_transitional_idx ON volumes(pending_heartbeat) WHERE state IN ('Creating', 'Migrating', 'Resizing', 'Reverting');

-- Down Migration

DROP INDEX volumes_transitional_idx;
CREATE INDEX volumes_transitional_idx ON volumes(pending_heartbeat) WHERE state IN ('Creating', 'Migrating', 'Resizing');
UPDATE volumes SET state = 'Ready', pending = NULL, pending_heartbeat = NULL WHERE state = 'Reverting';
ALTER TABLE volumes DROP CONSTRAINT volumes_state_check;
ALTER TABLE volumes ADD CONSTRAINT volumes_state_check
  CHECK (state IN ('Allocated', 'Creating', 'Ready', 'Migrating', 'Resizing', 'Error', 'Destroyed'));
