/**
 * The backup scrub's queries (docs/design.md §14): which stored backups to re-hash next, and what it found.
 * Columns: snapshot_store_ref.verified_at and .fault (db/migrations/1764800000000_backup-scrub.sql).
 */
import type { Queryable } from './pool.js';

/** A stored backup the scrub re-hashes. */
export interface ScrubCandidate {
  refId: string;
  snapshotId: string;
  accountId: string;
  volumeId: string;
  snapshotName: string;
  installPath: string;
  checksum: string;
  sizeBytes: number | null;
  storePath: string;
}

/**
 * Ready Image refs without a fault that the scrub has not found matching since `verifiedBefore` (never-verified
 * first, then least recently verified), other than those in `exclude` (already looked at in this run), at most `limit`.
 */
export async function backupsToScrub(db: Queryable, q: { verifiedBefore: Date; limit: number; exclude?: string[] }): Promise<ScrubCandidate[]> {
  const { rows } = await db.query(
    `SELECT r.id, r.snapshot_id, s.account_id, s.volume_id, s.name, r.install_path, r.checksum, r.size, st.path AS store_path
       FROM snapshot_store_ref r
       JOIN snapshots s ON s.id = r.snapshot_id
       JOIN image_stores st ON st.id = r.store_id
      WHERE r.store_role = 'Image' AND r.state = 'Ready' AND r.fault IS NULL AND r.checksum IS NOT NULL
        AND (r.verified_at IS NULL OR r.verified_at < $1)
        AND NOT (r.id = ANY($3::bigint[]))
      ORDER BY r.verified_at NULLS FIRST, r.id
      LIMIT $2`,
    [q.verifiedBefore, q.limit, q.exclude ?? []],
  );
  return rows.map((r) => ({
    refId: String(r.id),
    snapshotId: r.snapshot_id,
    accountId: r.account_id,
    volumeId: r.volume_id,
    snapshotName: r.name,
    installPath: r.install_path,
    checksum: r.checksum,
    sizeBytes: r.size == null ? null : Number(r.size),
    storePath: r.store_path,
  }));
}

/** Records that the ref's file matched its checksum now; false when the ref changed meanwhile (nothing written). */
export async function markScrubVerified(db: Queryable, ref: { refId: string; checksum: string }): Promise<boolean> {
  const { rowCount } = await db.query(
    `UPDATE snapshot_store_ref SET verified_at = now() WHERE id = $1 AND checksum = $2 AND state = 'Ready' AND fault IS NULL`,
    [ref.refId, ref.checksum],
  );
  return (rowCount ?? 0) > 0;
}

/** A snapshot whose backup the scrub marked faulty (its own file, or one in its chain). */
export interface FaultedBackup {
  snapshotId: string;
  accountId: string;
  volumeId: string;
  snapshotName: string;
}

/**
 * Marks the ref's backup faulty (`fault`) and every backup whose chain holds it (its dependants, any depth, not
 * Destroyed; `dependantFault`), in one statement. Nothing is written when the ref changed since it was read (another
 * checksum, no longer Ready, already faulty): the answer is then null. Otherwise: the ref's snapshot, then the
 * dependants newly marked.
 */
export async function markScrubFault(
  db: Queryable,
  ref: { snapshotId: string; checksum: string; fault: string; dependantFault: string },
): Promise<{ member: FaultedBackup; dependants: FaultedBackup[] } | null> {
  const { rows } = await db.query(
    `WITH RECURSIVE bad AS (
       UPDATE snapshot_store_ref SET fault = $3, last_updated = now()
        WHERE snapshot_id = $1 AND store_role = 'Image' AND checksum = $2 AND state = 'Ready' AND fault IS NULL
          -- A file a delete or GC is removing is not a fault: its snapshot is going (Destroying), or it is Destroyed
          -- with no backup depending on it any more (GC releases exactly those).
          AND EXISTS (SELECT 1 FROM snapshots s WHERE s.id = $1 AND (s.status NOT IN ('Destroying', 'Destroyed') OR EXISTS (
                SELECT 1 FROM snapshot_store_ref d WHERE d.parent_snapshot_id = $1 AND d.store_role = 'Image' AND d.state <> 'Destroyed')))
        RETURNING snapshot_id
     ), dep AS (
       SELECT r.snapshot_id, 1 AS depth FROM snapshot_store_ref r JOIN bad ON r.parent_snapshot_id = bad.snapshot_id
        WHERE r.store_role = 'Image' AND r.state <> 'Destroyed'
       UNION
       SELECT r.snapshot_id, d.depth + 1 FROM snapshot_store_ref r JOIN dep d ON r.parent_snapshot_id = d.snapshot_id
        WHERE r.store_role = 'Image' AND r.state <> 'Destroyed' AND d.depth < 10000
     ), marked AS (
       UPDATE snapshot_store_ref r SET fault = $4, last_updated = now()
         FROM (SELECT DISTINCT snapshot_id FROM dep) d
        WHERE r.snapshot_id = d.snapshot_id AND r.store_role = 'Image' AND r.fault IS NULL
        RETURNING r.snapshot_id
     )
     SELECT true AS member, s.id, s.account_id, s.volume_id, s.name FROM bad JOIN snapshots s ON s.id = bad.snapshot_id
     UNION ALL
     SELECT false, s.id, s.account_id, s.volume_id, s.name FROM marked JOIN snapshots s ON s.id = marked.snapshot_id`,
    [ref.snapshotId, ref.checksum, ref.fault, ref.dependantFault],
  );
  const of = (r: Record<string, any>): FaultedBackup => ({ snapshotId: r.id, accountId: r.account_id, volumeId: r.volume_id, snapshotName: r.name });
  const member = rows.find((r) => r.member);
  if (!member) return null;
  return { member: of(member), dependants: rows.filter((r) => !r.member).map(of) };
}

/**
 * Forgets what the scrub knew of a snapshot's Image ref while a new attempt writes its file (state Creating),
 * unless the parent it is now a delta on is itself faulty (the new delta inherits that).
 */
export async function resetScrubState(db: Queryable, snapshotId: string): Promise<void> {
  await db.query(
    `UPDATE snapshot_store_ref r SET verified_at = NULL, fault = NULL
      WHERE r.snapshot_id = $1 AND r.store_role = 'Image' AND r.state = 'Creating' AND (r.verified_at IS NOT NULL OR r.fault IS NOT NULL)
        AND NOT EXISTS (SELECT 1 FROM snapshot_store_ref p
                         WHERE p.snapshot_id = r.parent_snapshot_id AND p.store_role = 'Image' AND p.fault IS NOT NULL)`,
    [snapshotId],
  );
}
