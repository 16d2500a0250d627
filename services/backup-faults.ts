/**
 * Recording a backup that does not match its checksum (docs/design.md §14): found by the scrub, or by a restore
 * that read it. The fault is marked on the backup's Image ref and on every backup whose chain holds it, with an
 * ERROR event for each snapshot, in one transaction; the next backup of the volume is then a full one, and
 * restores of those snapshots are refused with BACKUP_CORRUPT.
 */
import type { Logger } from 'pino';
import { markScrubFault, type FaultedBackup } from '../db/backup-scrub.js';
import { recordEvent } from '../db/events.js';
import { withTransaction, type Pool } from '../db/pool.js';

export interface BackupFault {
  /** The snapshot whose backup file is wrong. */
  snapshotId: string;
  /** The checksum recorded for it (the fault is marked only while it is still the one on record). */
  checksum: string;
  /** What is wrong, in a few words. */
  fault: string;
  /** Who found it. */
  foundBy: 'scrub' | 'restore';
}

/** Marks the fault and records its events; answers the snapshots marked (null: the ref changed or was marked already). */
export async function recordBackupFault(
  pool: Pool,
  logger: Logger,
  f: BackupFault,
): Promise<{ member: FaultedBackup; dependants: FaultedBackup[] } | null> {
  const outcome = await withTransaction(pool, async (tx) => {
    const marked = await markScrubFault(tx, {
      snapshotId: f.snapshotId,
      checksum: f.checksum,
      fault: f.fault,
      dependantFault: `the backup of snapshot ${f.snapshotId} in its chain is faulty: ${f.fault}`,
    });
    if (!marked) return null;
    const { member, dependants } = marked;
    const by = f.foundBy === 'scrub' ? 'the backup scrub' : 'a restore';
    await recordEvent(tx, {
      type: 'SNAPSHOT.BACKUP',
      level: 'ERROR',
      accountId: member.accountId,
      resourceType: 'Snapshot',
      resourceId: member.snapshotId,
      description:
        `the backup of snapshot ${member.snapshotId} (${member.snapshotName}) does not match its checksum (found by ${by}): ${f.fault}; ` +
        `it is kept for inspection, restores of it are refused and the next backup of volume ${member.volumeId} is a full one`,
      details: { snapshotId: member.snapshotId, volumeId: member.volumeId, fault: f.fault, foundBy: f.foundBy, dependants: dependants.map((d) => d.snapshotId) },
    });
    for (const d of dependants) {
      await recordEvent(tx, {
        type: 'SNAPSHOT.BACKUP',
        level: 'ERROR',
        accountId: d.accountId,
        resourceType: 'Snapshot',
        resourceId: d.snapshotId,
        description:
          `the backup of snapshot ${d.snapshotId} (${d.snapshotName}) cannot be restored: the backup of snapshot ${member.snapshotId} in its chain ` +
          `does not match its checksum (found by ${by}); the next backup of volume ${d.volumeId} is a full one`,
        details: { snapshotId: d.snapshotId, volumeId: d.volumeId, faultySnapshotId: member.snapshotId, fault: f.fault, foundBy: f.foundBy },
      });
    }
    return marked;
  });
  if (outcome) {
    logger.error(
      { snapshotId: f.snapshotId, fault: f.fault, foundBy: f.foundBy, dependants: outcome.dependants.map((d) => d.snapshotId) },
      'backup marked faulty: it does not match its checksum',
    );
  }
  return outcome;
}
