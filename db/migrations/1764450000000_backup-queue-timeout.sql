-- Up Migration
-- backup.queue.timeout as it was when the snapshot was requested (it travels in the workflow input, like the
-- retry settings); NULL for snapshots requested before the setting existed: no bound.
ALTER TABLE snapshots ADD COLUMN backup_queue_timeout integer CHECK (backup_queue_timeout > 0);

-- Down Migration
ALTER TABLE snapshots DROP COLUMN backup_queue_timeout;
