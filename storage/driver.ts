import type { Hypervisor } from '../domain/hypervisor.js';

/** What the snapshot engine needs from a hypervisor's storage (KVM: qcow2 + qemu-img; XenServer: XenAPI). */

/** Thrown by drivers when an image stays locked by another process beyond their retry bound; retryable. */
export { BackupCorruptError, ImageBusyError } from './common.js';

export interface BackupProgress {
  bytesDone: number;
  bytesTotal: number;
}

export interface BackupTarget {
  accountId: string;
  volumeId: string;
  snapshotId: string;
}

export interface BackupResult {
  /** Path relative to the image store root: snapshots/<accountId>/<volumeId>/<snapshotId>.<ext> */
  installPath: string;
  /** Bytes of the backup file as written (for a delta: the delta file only, not its chain). */
  sizeBytes: number;
  /** `sha256:<hex>` of the backup file's bytes (for a delta: the delta file as written) */
  checksum: string;
  /** The snapshot whose backup this one is a delta on; null (or absent, older results) for a full backup. */
  parentSnapshotId?: string | null;
}

/**
 * An earlier backup of the same volume in the same image store that a new backup may be a delta on
 * (docs/design.md §14). Its whole chain must be present and verified by the caller.
 */
export interface BackupParent {
  snapshotId: string;
  /** Install path of the parent's backup file, relative to the same image store root. */
  installPath: string;
}

/**
 * One file of the backup chain a restore reads, top first (db/snapshots.ts getBackupChain): where it is and the
 * sha256 recorded when it was written. A restore verifies every member it reads against it (docs/design.md §14).
 */
export interface RestoreMember {
  snapshotId: string;
  installPath: string;
  checksum: string;
}

export interface CreatedVolume {
  /** Absolute path of the volume's image on primary storage (derived from ids only). */
  path: string;
  format: 'qcow2' | 'vhd';
}

/**
 * Runs `fn` while holding the cross-process lock of one image (services pass db/image-locks.ts withImageLock
 * bound to the volume). Drivers wrap only short mutating steps in it, never long reads.
 */
export type ImageLockRunner = <T>(fn: () => Promise<T>) => Promise<T>;

export interface StorageDriver {
  readonly hypervisor: Hypervisor;
  /**
   * Whether backupSnapshot can write a delta on a parent backup (`opts.parent`); a driver without it always
   * writes full backups and ignores `opts.parent`.
   */
  readonly incrementalBackups?: boolean;

  /** Creates an empty volume image of `sizeBytes` in pool `poolPath`. */
  createVolume(poolPath: string, volumeId: string, sizeBytes: number): Promise<CreatedVolume>;
  /** Deletes a volume image; a missing image is not an error. */
  deleteVolume(volumePath: string): Promise<void>;
  /** Grows or shrinks the volume's virtual size. */
  resizeVolume(volumePath: string, sizeBytes: number): Promise<void>;
  /**
   * Moves a volume image to another pool, keeping its internal snapshots; returns the new volume. Idempotent: a
   * retry after a crash finishes the move. `opts.lock` wraps the short step that publishes the copy and
   * removes the source (not the copy itself).
   */
  migrateVolume(volumePath: string, targetPoolPath: string, volumeId: string, opts?: { lock?: ImageLockRunner }): Promise<CreatedVolume>;

  /**
   * Creates an internal snapshot named after `snapshotId`; idempotent (an existing one is kept). `fresh` says
   * no earlier call can have created it and gives the volume's size, so a driver may skip its existence probe.
   */
  createSnapshot(volumePath: string, snapshotId: string, fresh?: { volumeSizeBytes: number }): Promise<{ sizeBytes: number }>;
  /** Deletes the internal snapshot; a missing one is not an error. */
  deleteSnapshot(volumePath: string, snapshotId: string): Promise<void>;
  /** Whether the internal snapshot exists. */
  hasSnapshot(volumePath: string, snapshotId: string): Promise<boolean>;
  /** Reverts the volume to the internal snapshot. */
  revertSnapshot(volumePath: string, snapshotId: string): Promise<void>;

  /**
   * Copies the snapshot's point-in-time bytes into the image store: writes a temporary file, fsyncs it,
   * computes its sha256, then renames it into place. A half-written backup never appears under its final name.
   * With `opts.parent` (drivers with `incrementalBackups`), the backup is a delta holding only what differs from
   * the parent's backup, which it references by a relative path; the parent's files are only read.
   */
  backupSnapshot(
    volumePath: string,
    imageStoreRoot: string,
    target: BackupTarget,
    opts?: {
      onProgress?: (p: BackupProgress) => void;
      signal?: AbortSignal;
      parent?: BackupParent;
      /** The volume's image lock, for short reads of metadata that other writers of the image rewrite. */
      lock?: ImageLockRunner;
      /**
       * The attempt's fencing token (db/snapshots.ts claimBackupAttempt): its temporary file carries it, and only
       * temporary files of older tokens (superseded or dead attempts) are removed as leftovers, never a newer one's.
       */
      token?: number;
      /**
       * Runs the rename of the finished file into place (`commit`); refuses, throwing, when this attempt no
       * longer owns the backup, so a superseded attempt never replaces the file of the one that took over.
       */
      publish?: (commit: () => Promise<void>) => Promise<void>;
    },
  ): Promise<BackupResult>;
  /** Verifies a backup's bytes against its checksum. */
  verifyBackup(imageStoreRoot: string, installPath: string, checksum: string): Promise<boolean>;
  /**
   * Creates a new volume from a backup in the image store (a delta is read through its chain and flattened).
   * `chain` is the backup's chain, top first (its first member is `installPath`'s): every file read is verified
   * against its recorded sha256 as it is read, and a mismatch refuses with BackupCorruptError, creating nothing.
   */
  createVolumeFromBackup(imageStoreRoot: string, installPath: string, poolPath: string, volumeId: string, chain: RestoreMember[]): Promise<CreatedVolume>;
  /**
   * Rewrites an existing volume with a backup's point-in-time content (a delta read through its chain), keeping
   * the volume's internal snapshots: a revert whose primary snapshot is gone. `chain` as for
   * createVolumeFromBackup; a mismatch refuses with BackupCorruptError before the volume is touched. Optional:
   * drivers without it refuse such a revert.
   */
  restoreVolumeFromBackup?(imageStoreRoot: string, installPath: string, volumePath: string, chain: RestoreMember[]): Promise<void>;
  /** Removes backup files of a snapshot, including temporary (partial) ones; missing files are not an error. */
  deleteBackupFiles(imageStoreRoot: string, target: BackupTarget): Promise<string[]>;
}

/** The storage drivers a process has, by hypervisor (a hypervisor without one is refused). */
export type StorageDrivers = Partial<Record<Hypervisor, StorageDriver>>;
