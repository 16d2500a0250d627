/**
 * The storage half of deleting a snapshot, run after its intent is committed (BackedUp → Destroying, or an
 * Error snapshot the user deletes) and outside any row lock: its backup files (unless a later delta depends on
 * them: docs/design.md §14) and its primary snapshot go under the volume's image lock, then Destroyed is
 * committed with its refs (kept, Destroyed, as the record of what was removed). A crash in between leaves the
 * snapshot Destroying, which start-up and storage GC finish here (idempotent: what is already gone is skipped,
 * and only the first to commit Destroyed records it).
 */
import type { Logger } from 'pino';
import { defaultImageStore } from '../db/catalog.js';
import { findImageStore } from '../db/catalog-queries.js';
import { withImageLock } from '../db/image-locks.js';
import { withTransaction, type Pool } from '../db/pool.js';
import { pausePoint } from '../observability/pause-points.js';
import {
  destroyingSnapshotIds,
  getSnapshot,
  getStoreRefs,
  hasDependentBackups,
  retireStoreRefs,
  setStoreRefState,
  transitionSnapshot,
  type SnapshotRecord,
} from '../db/snapshots.js';
import { findVolume, isTransitionalVolumeState } from '../db/volumes.js';
import { removeSnapshotStorage, type RemovedSnapshotStorage } from '../storage/cleanup.js';
import type { StorageDrivers } from '../storage/driver.js';
import { settleVolumeImageDeletes } from './volume-image-delete.js';

export interface SnapshotDeleteDeps {
  pool: Pool;
  drivers: StorageDrivers;
  logger: Logger;
}

export interface FinishedSnapshotDelete extends RemovedSnapshotStorage {
  /** destroyed: this call committed Destroyed; not-ours: the snapshot had left `from` (finished by another); deferred: its volume is busy. */
  outcome: 'destroyed' | 'not-ours' | 'deferred';
  backupKept: boolean;
  snapshot: SnapshotRecord | undefined;
}

/**
 * Finishes deleting snapshot `snapshotId`, which must be in `from` (Destroying: a BackedUp snapshot's delete;
 * Error: the user deleting a failed one). `reconciler`: finishing a delete whose process died (start-up, GC).
 */
export async function finishSnapshotDelete(
  deps: SnapshotDeleteDeps,
  snapshotId: string,
  opts: { from: 'Destroying' | 'Error'; reconciler?: boolean },
): Promise<FinishedSnapshotDelete> {
  const { pool } = deps;
  const none = (outcome: FinishedSnapshotDelete['outcome'], snapshot: SnapshotRecord | undefined): FinishedSnapshotDelete => ({
    outcome,
    backupKept: false,
    removedFiles: [],
    primarySnapshotDeleted: false,
    snapshot,
  });
  const first = await getSnapshot(pool, snapshotId);
  if (!first || first.status !== opts.from) return none('not-ours', first);
  const log = deps.logger.child({ snapshotId, volumeId: first.volumeId, operation: 'delete-snapshot', reconciler: opts.reconciler ?? false });
  const volume = await findVolume(pool, first.volumeId, null);
  if (!volume) throw new Error(`volume ${first.volumeId} of snapshot ${snapshotId} not found`);
  // Its image may be moving (a migration begun after the delete's intent): finished on a later run.
  if (!volume.removedAt && isTransitionalVolumeState(volume.state)) {
    log.info({ volumeState: volume.state }, 'volume of a snapshot being deleted is busy; the delete is finished later');
    return none('deferred', first);
  }
  const driver = deps.drivers[volume.hypervisor];
  if (!driver) throw new Error(`no storage driver for ${volume.hypervisor}`);
  await pausePoint('delete-intent', volume.id, { snapshotId });

  // Under the image lock: apart from the other writers of the image and from another finisher of this delete.
  const storage = await withImageLock(
    pool,
    volume.id,
    async () => {
      const now = await getSnapshot(pool, snapshotId);
      if (!now || now.status !== opts.from) return null;
      const refs = await getStoreRefs(pool, snapshotId);
      const imageStoreIds = new Set(refs.filter((r) => r.role === 'Image').map((r) => r.storeId));
      const stores = imageStoreIds.size ? await Promise.all([...imageStoreIds].map((sid) => findImageStore(pool, sid))) : [await defaultImageStore(pool)];
      // Skipped when already gone (compensated, or its volume deleted or replaced).
      const primaryLive = refs.some((r) => r.role === 'Primary' && r.state !== 'Destroyed');
      // A backup a later delta depends on stays (its Image ref too) until nothing does; storage GC then removes
      // it. No backup can start depending on this one now: a parent must be BackedUp (db/snapshots.ts beginImageRef).
      const backupKept = await hasDependentBackups(pool, snapshotId);
      const removed = await removeSnapshotStorage({
        driver,
        target: { accountId: now.accountId, volumeId: now.volumeId, snapshotId },
        storePaths: backupKept ? [] : stores.flatMap((s) => (s ? [s.path] : [])),
        volumePath: primaryLive && !volume.removedAt ? volume.path : null,
        // Already held.
        lock: (fn) => fn(),
      });
      return { ...removed, backupKept, name: now.name };
    },
    { logger: log },
  );
  if (!storage) return none('not-ours', await getSnapshot(pool, snapshotId));

  await pausePoint('delete-storage-done', volume.id, { snapshotId });
  const { backupKept } = storage;
  const committed = await withTransaction(pool, async (tx) => {
    const moved = await transitionSnapshot(tx, snapshotId, 'Destroyed', {
      set: { removed: new Date() },
      event: {
        type: 'SNAPSHOT.DELETE',
        description:
          (backupKept
            ? `snapshot ${storage.name} deleted; its backup stays while later incremental backups depend on it`
            : `snapshot ${storage.name} deleted`) + (opts.reconciler ? ' (finished after an interruption)' : ''),
        details: {
          backupKept,
          removedFiles: storage.removedFiles,
          primarySnapshotDeleted: storage.primarySnapshotDeleted,
          ...(opts.reconciler ? { reconciler: true } : {}),
        },
      },
    });
    // Only the one that moved it records the refs (another finisher may have been first).
    if (!moved.changed) return { moved: false, snapshot: moved.snapshot };
    if (backupKept) await setStoreRefState(tx, snapshotId, 'Primary', 'Destroyed');
    else await retireStoreRefs(tx, snapshotId, 'mark-destroyed');
    return { moved: true, snapshot: moved.snapshot };
  });
  if (committed.moved) {
    log[opts.reconciler ? 'warn' : 'info'](
      { backupKept, removedFiles: storage.removedFiles, primarySnapshotDeleted: storage.primarySnapshotDeleted },
      opts.reconciler ? 'interrupted snapshot delete finished' : 'snapshot deleted',
    );
  }
  return {
    outcome: committed.moved ? 'destroyed' : 'not-ours',
    backupKept,
    removedFiles: storage.removedFiles,
    primarySnapshotDeleted: storage.primarySnapshotDeleted,
    snapshot: committed.snapshot,
  };
}

export interface SettledSnapshotDeletes {
  destroyed: Array<{ snapshotId: string; backupKept: boolean; removedFiles: string[]; primarySnapshotDeleted: boolean }>;
  failures: Array<{ snapshotId: string; error: string }>;
}

/**
 * Finishes every delete whose process died between its intent (Destroying) and its result. Run at start-up
 * and by storage GC's reconcile step; idempotent and safe beside a live delete (which then finds it done).
 */
export async function settleDestroyingSnapshots(deps: SnapshotDeleteDeps): Promise<SettledSnapshotDeletes> {
  const result: SettledSnapshotDeletes = { destroyed: [], failures: [] };
  for (const id of await destroyingSnapshotIds(deps.pool)) {
    try {
      const r = await finishSnapshotDelete(deps, id, { from: 'Destroying', reconciler: true });
      if (r.outcome === 'destroyed') {
        result.destroyed.push({ snapshotId: id, backupKept: r.backupKept, removedFiles: r.removedFiles, primarySnapshotDeleted: r.primarySnapshotDeleted });
      }
    } catch (err) {
      deps.logger.error({ err, snapshotId: id }, 'finishing an interrupted snapshot delete failed; left for the next run');
      result.failures.push({ snapshotId: id, error: err instanceof Error ? err.message : String(err) });
    }
  }
  return result;
}

/** Start-up's settling of interrupted deletes: snapshots left Destroying, then Destroyed volumes' images. */
export async function settleInterruptedDeletes(deps: SnapshotDeleteDeps): Promise<void> {
  const snapshots = await settleDestroyingSnapshots(deps);
  const images = await settleVolumeImageDeletes(deps);
  if (snapshots.destroyed.length || images.deleted.length) {
    deps.logger.warn({ snapshots: snapshots.destroyed.map((d) => d.snapshotId), volumes: images.deleted }, 'interrupted deletes finished at start-up');
  }
}
