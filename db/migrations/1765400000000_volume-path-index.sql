-- Up Migration

-- The live-image resolver (services/live-images.ts) finds a volume by its image path on the time-to-created
-- path of every snapshot; the power sync does the same for a running domain's disks.
CREATE INDEX volumes_path_idx ON volumes(path) WHERE removed IS NULL;

-- Down Migration

DROP INDEX volumes_path_idx;
