import { getBackupChain } from '../db/snapshots.js';
import type { Queryable } from '../db/pool.js';
import { ConflictError } from '../domain/errors.js';
import { chainRecordProblem } from '../storage/chain.js';
import type { RestoreMember } from '../storage/driver.js';

/**
 * The chain a restore of a snapshot's backup reads, top first, with each member's recorded sha256 (the driver
 * verifies each as it reads it). A chain the record already says is bad (a member the scrub or an earlier restore
 * found faulty, one missing or not Ready) is refused with BACKUP_CORRUPT before anything is written.
 */
export async function restoreChain(db: Queryable, snapshotId: string): Promise<RestoreMember[]> {
  const members = await getBackupChain(db, snapshotId);
  const problem = chainRecordProblem(members);
  if (problem) throw new ConflictError('BACKUP_CORRUPT', `the backup of snapshot ${snapshotId} cannot be restored: ${problem}`, { snapshotId });
  return members.map((m) => ({ snapshotId: m.snapshotId, installPath: m.installPath, checksum: m.checksum! }));
}
