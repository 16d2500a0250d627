-- Up Migration

-- Long storage work (migrate, resize, a new volume from a snapshot) no longer runs inside the transaction that
-- holds the VM and volume row locks: the volume is first committed in a transitional state, the storage work
-- runs outside any transaction, and a second short transaction commits the result. `pending` records what the
-- operation does (enough to finish or undo it after a crash), `pending_heartbeat` shows that its process is
-- still alive; a volume whose heartbeat is stale is reconciled (services/volume-reconcile.ts).
ALTER TABLE volumes DROP CONSTRAINT volumes_state_check;
ALTER TABLE volumes ADD CONSTRAINT volumes_state_check
  CHECK (state IN ('Allocated', 'Creating', 'Ready', 'Migrating', 'Resizing', 'Error', 'Destroyed'));
ALTER TABLE volumes ADD COLUMN pending jsonb;
ALTER TABLE volumes ADD COLUMN pending_heartbeat timestamptz;
CREATE INDEX volumes_transitional_idx ON volumes(pending_heartbeat) WHERE state IN ('Creating', 'Migrating', 'Resizing');

-- Down Migration

DROP INDEX volumes_transitional_idx;
ALTER TABLE volumes DROP COLUMN pending_heartbeat;
ALTER TABLE volumes DROP COLUMN pending;
UPDATE volumes SET state = 'Ready' WHERE state IN ('Migrating', 'Resizing');
UPDATE volumes SET state = 'Destroyed', removed = coalesce(removed, now()) WHERE state IN ('Creating', 'Error');
ALTER TABLE volumes DROP CONSTRAINT volumes_state_check;
ALTER TABLE volumes ADD CONSTRAINT volumes_state_check CHECK (state IN ('Allocated', 'Ready', 'Destroyed'));
