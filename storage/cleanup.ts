import { stat } from 'node:fs/promises';
import type { BackupTarget, ImageLockRunner, StorageDriver } from './driver.js';

export interface SnapshotStorage {
  driver: StorageDriver;
  target: BackupTarget;
  /** Image store roots that may hold the snapshot's backup files. */
  storePaths: string[];
  /** The volume's image on primary storage; null when the volume is gone (its internal snapshots went with it). */
  volumePath: string | null;
  /** The volume's image lock (db/image-locks.ts imageLockRunner). */
  lock: ImageLockRunner;
}

export interface RemovedSnapshotStorage {
  removedFiles: string[];
  primarySnapshotDeleted: boolean;
}

/** The errno code of an error or of the innermost error of its cause chain. */
function errnoCode(err: unknown): string | undefined {
  let e: unknown = err;
  for (;;) {
    const code = (e as NodeJS.ErrnoException | undefined)?.code;
    if (code) return code;
    if (!(e instanceof Error) || !e.cause) return undefined;
    e = e.cause;
  }
}

/**
 * Removes everything a snapshot holds in storage: its backup files in every given image store (temporary ones
 * too) and its internal snapshot on primary storage. The one cleanup behind a user's delete
 * (services/snapshots.ts) and storage GC's cleaning of Error snapshots (activities/storage-gc-activities.ts).
 * Idempotent: what is already gone is skipped; a store path that cannot be a directory holds no files.
 */
export async function removeSnapshotStorage(s: SnapshotStorage): Promise<RemovedSnapshotStorage> {
  const removedFiles: string[] = [];
  for (const storePath of s.storePaths) {
    try {
      removedFiles.push(...(await s.driver.deleteBackupFiles(storePath, s.target)));
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'ENOTDIR' || code === 'ENOENT') continue;
      throw err;
    }
  }
  let primarySnapshotDeleted = false;
  // A KVM volume file that is gone took its internal snapshots with it; XenServer snapshots are VDIs of their
  // own, which hasSnapshot finds (or not) whatever became of the base VDI.
  const volumeExists =
    s.volumePath !== null && (s.driver.hypervisor !== 'KVM' || (await stat(s.volumePath).then((f) => f.isFile(), () => false)));
  if (volumeExists && (await s.driver.hasSnapshot(s.volumePath!, s.target.snapshotId))) {
    await s.lock(() => s.driver.deleteSnapshot(s.volumePath!, s.target.snapshotId));
    primarySnapshotDeleted = true;
  }
  return { removedFiles, primarySnapshotDeleted };
}
