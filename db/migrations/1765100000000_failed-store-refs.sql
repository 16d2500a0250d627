-- Up Migration

-- An Image ref whose backup attempt never finished, on a snapshot that went to Error, is Failed (CloudStack's
-- ObjectInDataStoreStateMachine has the same state): it no longer reads "Creating" until storage GC cleans it.
-- transitionSnapshot (db/snapshots.ts) sets it in the statement that commits Error; rows from before are set here.
ALTER TABLE snapshot_store_ref DROP CONSTRAINT snapshot_store_ref_state_check;
ALTER TABLE snapshot_store_ref ADD CONSTRAINT snapshot_store_ref_state_check
  CHECK (state IN ('Allocated', 'Creating', 'Ready', 'Failed', 'Destroyed'));
UPDATE snapshot_store_ref r SET state = 'Failed', last_updated = now()
  FROM snapshots s
 WHERE s.id = r.snapshot_id AND s.status = 'Error' AND r.store_role = 'Image' AND r.state IN ('Allocated', 'Creating');

-- Down Migration

UPDATE snapshot_store_ref SET state = 'Creating' WHERE state = 'Failed';
ALTER TABLE snapshot_store_ref DROP CONSTRAINT snapshot_store_ref_state_check;
ALTER TABLE snapshot_store_ref ADD CONSTRAINT snapshot_store_ref_state_check
  CHECK (state IN ('Allocated', 'Creating', 'Ready', 'Destroyed'));
