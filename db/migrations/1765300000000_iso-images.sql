-- Up Migration

-- An ISO with an image file on this server can go into a running KVM VM's CD-ROM (docs/design.md §15); the
-- catalog's distribution ISOs are names only (path NULL) until an operator registers their files.
ALTER TABLE isos ADD COLUMN path text;

-- Down Migration

ALTER TABLE isos DROP COLUMN path;
