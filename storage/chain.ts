/**
 * Verifying a backup chain (docs/design.md §12, §14): a delta is only as good as every backup below it.
 */
import { stat } from 'node:fs/promises';
import type { StorageDriver } from './driver.js';
import { resolveInstallPath } from './paths.js';

/** One member of a chain as the database records it (db/snapshots.ts StoreRefRecord). */
export interface ChainMember {
  snapshotId: string;
  installPath: string;
  state: string;
  sizeBytes: number | null;
  checksum: string | null;
  parentSnapshotId?: string | null;
  chainLength?: number;
}

/**
 * Checks a chain given top first (db/snapshots.ts getBackupChain): it is whole (each member's parent is the next
 * one, the last is a full backup, the length is the one recorded), every member is Ready, and its files verify.
 * `full`: every file's sha256 (and `qemu-img check`) is checked; otherwise only the top file's, and the others by
 * presence and size: each of them was verified in full when the backup on it was written, and reading a whole
 * volume's worth of hashes before every delta would cost what the delta saves. Answers null when the chain is
 * good, or what is wrong.
 */
export async function checkBackupChain(driver: StorageDriver, storeRoot: string, chain: ChainMember[], opts: { full: boolean }): Promise<string | null> {
  const top = chain[0];
  if (!top) return 'no backup';
  if ((top.chainLength ?? 1) !== chain.length) return `chain of ${top.chainLength ?? 1} backup(s) has ${chain.length} on record`;
  for (const [i, m] of chain.entries()) {
    const next = chain[i + 1];
    if ((m.parentSnapshotId ?? null) !== (next?.snapshotId ?? null)) return `backup of ${m.snapshotId} does not link to the next in its chain`;
    if (m.state !== 'Ready' || !m.checksum) return `backup of ${m.snapshotId} is ${m.state}`;
    if (i === 0 || opts.full) {
      if (!(await driver.verifyBackup(storeRoot, m.installPath, m.checksum))) return `backup of ${m.snapshotId} does not match its checksum`;
    } else {
      const size = await stat(resolveInstallPath(storeRoot, m.installPath)).then((s) => s.size, () => null);
      if (size === null) return `backup file of ${m.snapshotId} is missing`;
      if (m.sizeBytes !== null && size !== Number(m.sizeBytes)) return `backup file of ${m.snapshotId} has ${size} bytes, ${m.sizeBytes} on record`;
    }
  }
  return null;
}
