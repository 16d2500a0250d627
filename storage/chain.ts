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
  /** Set by the scrub (docs/design.md §14) when the member, or a member below it, did not match its checksum. */
  fault?: string | null;
}

/**
 * Checks a chain given top first (db/snapshots.ts getBackupChain): it is whole (each member's parent is the next
 * one, the last is a full backup, the length is the one recorded), every member is Ready and not marked faulty by
 * the scrub, and its files verify. `full`: every file's sha256 (and `qemu-img check`) is checked; otherwise no
 * file is read: each member is checked by its recorded metadata (presence and size). A member's integrity is
 * established when it is written (its sha256 as written is recorded) and re-checked by the scrub at a bounded rate;
 * reading a volume's worth of hashes before every delta would cost what the delta saves, and would outlast the
 * backup's heartbeat on a large parent. Answers null when the chain is good, or what is wrong.
 */
export async function checkBackupChain(driver: StorageDriver, storeRoot: string, chain: ChainMember[], opts: { full: boolean }): Promise<string | null> {
  // What the database says first (links, states, the scrub's marks), then the files.
  const recorded = chainRecordProblem(chain);
  if (recorded) return recorded;
  for (const m of chain) {
    if (opts.full) {
      if (!(await driver.verifyBackup(storeRoot, m.installPath, m.checksum!))) return `backup of ${m.snapshotId} does not match its checksum`;
    } else {
      const size = await stat(resolveInstallPath(storeRoot, m.installPath)).then((s) => s.size, () => null);
      if (size === null) return `backup file of ${m.snapshotId} is missing`;
      if (m.sizeBytes !== null && size !== Number(m.sizeBytes)) return `backup file of ${m.snapshotId} has ${size} bytes, ${m.sizeBytes} on record`;
    }
  }
  return null;
}

/**
 * What the database's record of a chain (top first) says against it, reading no file: it is whole (each member's
 * parent is the next one, the last is a full backup, the length is the one recorded), every member is Ready with
 * a checksum and not marked faulty. Null when nothing is.
 */
export function chainRecordProblem(chain: ChainMember[]): string | null {
  const top = chain[0];
  if (!top) return 'no backup';
  if ((top.chainLength ?? 1) !== chain.length) return `chain of ${top.chainLength ?? 1} backup(s) has ${chain.length} on record`;
  for (const [i, m] of chain.entries()) {
    const next = chain[i + 1];
    if ((m.parentSnapshotId ?? null) !== (next?.snapshotId ?? null)) return `backup of ${m.snapshotId} does not link to the next in its chain`;
    if (m.state !== 'Ready' || !m.checksum) return `backup of ${m.snapshotId} is ${m.state}`;
    if (m.fault) return `backup of ${m.snapshotId} is marked faulty by the scrub: ${m.fault}`;
  }
  return null;
}
