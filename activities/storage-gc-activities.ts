import type { Dirent } from 'node:fs';
import { readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { Context } from '@temporalio/activity';
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import type { Logger } from 'pino';
import { findImageStore, listImageStores } from '../db/catalog-queries.js';
import { imageLockRunner } from '../db/image-locks.js';
import type { Pool } from '../db/pool.js';
import { findVolumeLocation, isTransitionalVolumeState } from '../db/volumes.js';
import { settleDestroyingSnapshots, type SettledSnapshotDeletes } from '../services/snapshot-delete.js';
import { settleVolumeImageDeletes } from '../services/volume-image-delete.js';
import { reconcileStuckVolumes, type VolumeReconcileResult } from '../services/volume-reconcile.js';
import {
  errorSnapshotsToClean,
  getBackupChain,
  getStoreRefs,
  hasDependentBackups,
  inFlightSnapshotsToReconcile,
  keptBackupSnapshotIds,
  retireStoreRefs,
  setStoreRefState,
  snapshotStatuses,
  transitionSnapshot,
  unreferencedKeptBackups,
} from '../db/snapshots.js';
import { IllegalSnapshotTransitionError, type SnapshotState } from '../domain/snapshot-states.js';
import { checkBackupChain } from '../storage/chain.js';
import { removeSnapshotStorage } from '../storage/cleanup.js';
import type { StorageDrivers } from '../storage/driver.js';
import { isFileOf, isUuid } from '../storage/paths.js';
import { snapshotWorkflowId } from '../workflows/definitions.js';

export interface StorageGcActivityDeps {
  pool: Pool;
  drivers: StorageDrivers;
  logger: Logger;
  /** Needed by the reconciler (it describes each in-flight snapshot's workflow); without it that step is skipped. */
  client?: Client;
  /** Allocated rows younger than this are left alone: their workflow start may still be in flight (s). */
  allocatedGraceSeconds?: number;
  /** Volumes in a transitional state without a heartbeat for this long are reconciled (s); default 120. */
  volumeStaleAfterSeconds?: number;
}

/** An in-flight snapshot whose workflow was gone, settled: to BackedUp from a verified backup, else to Error. */
export interface ReconciledSnapshot {
  /** Where the reconciler moved it: BackedUp when its Image ref was Ready and verified, Error otherwise. */
  to?: 'BackedUp' | 'Error';
  snapshotId: string;
  volumeId: string;
  workflowId: string;
  previousState: SnapshotState;
  /** NOT_FOUND, TERMINATED, TIMED_OUT, CANCELLED, FAILED, COMPLETED, ... */
  workflowStatus: string;
  reason: string;
}

/** An Error snapshot whose storage was cleaned and which is now Destroyed. */
export interface DestroyedSnapshot {
  snapshotId: string;
  volumeId: string;
  /** Absolute paths of the backup files (final or temporary) removed. */
  removedFiles: string[];
  primarySnapshotDeleted: boolean;
  storeRefsDeleted: number;
}

/** A file under an image store's `snapshots/` that no healthy snapshot owns, removed. */
export interface RemovedOrphanFile {
  storeId: string;
  path: string;
  snapshotId: string;
  reason: string;
}

export interface GcFailure {
  step: 'reconcile' | 'clean' | 'orphans';
  snapshotId?: string;
  path?: string;
  error: string;
}

export interface ReconcileResult {
  /** In-flight snapshots looked at. */
  checked: number;
  reconciled: ReconciledSnapshot[];
  /** Allocated snapshots inside the grace period. */
  deferred: string[];
  skipped: boolean;
  failures: GcFailure[];
  /** Volumes left Migrating/Resizing/Creating by a dead process, finished or undone (logged; not in the GC result yet). */
  volumes?: VolumeReconcileResult['settled'];
  /** Snapshot deletes interrupted after Destroying was committed, finished (Destroyed). */
  deletes?: SettledSnapshotDeletes['destroyed'];
  /** Destroyed volumes whose image deletion a crash interrupted, now deleted. */
  volumeImagesDeleted?: string[];
}

export interface CleanResult {
  destroyed: DestroyedSnapshot[];
  failures: GcFailure[];
}

export interface OrphanResult {
  /** Backup files (final and temporary) looked at. */
  scanned: number;
  removed: RemovedOrphanFile[];
  failures: GcFailure[];
}

/** File names GC understands: `<snapshotId>.<ext>` and its temporaries `<snapshotId>.<ext>.partial-<hex>`. */
const BACKUP_FILE = /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.(qcow2|vhd)(\.partial-[0-9a-f]+)?$/i;

const messageOf = (err: unknown): string => (err instanceof Error ? err.message : String(err));
const codeOf = (err: unknown): string | undefined => (err as NodeJS.ErrnoException | undefined)?.code;

/** Heartbeats when running as an activity (harmless otherwise), so a long run shows progress. */
function beat(details?: unknown): void {
  try {
    Context.current().heartbeat(details);
  } catch {
    // not inside an activity (a direct call from a test)
  }
}

/**
 * Storage garbage collection (the seed's "storage GC thread"), as activities over injected dependencies.
 * Every step is idempotent and safe to run while backups are running.
 */
export function createStorageGcActivities(deps: StorageGcActivityDeps) {
  const { pool } = deps;
  const graceSeconds = deps.allocatedGraceSeconds ?? 60;
  const log = deps.logger.child({ component: 'storage-gc' });

  const imageStores = () => listImageStores(pool);

  /**
   * Removes backups kept for later deltas (their snapshots deleted) that nothing depends on any more, newest first
   * and again until none is left, so a whole chain of deleted snapshots goes in one run (docs/design.md §14).
   */
  async function releaseChainMembers(result: OrphanResult): Promise<void> {
    const seen = new Set<string>();
    for (;;) {
      const batch = (await unreferencedKeptBackups(pool)).filter((b) => !seen.has(b.snapshotId));
      if (batch.length === 0) return;
      for (const b of batch) {
        seen.add(b.snapshotId);
        beat({ step: 'orphans', snapshotId: b.snapshotId });
        try {
          const driver = deps.drivers[b.hypervisor];
          if (!driver) throw new Error(`no storage driver for ${b.hypervisor}`);
          const removed = await driver.deleteBackupFiles(b.storePath, { accountId: b.accountId, volumeId: b.volumeId, snapshotId: b.snapshotId });
          await setStoreRefState(pool, b.snapshotId, 'Image', 'Destroyed');
          const reason = 'backup of a deleted snapshot that no later backup depends on any more';
          log.info({ snapshotId: b.snapshotId, removed }, `storage GC removed a ${reason}`);
          for (const p of removed) result.removed.push({ storeId: b.storeId, path: p, snapshotId: b.snapshotId, reason });
        } catch (err) {
          log.error({ err, snapshotId: b.snapshotId }, 'storage GC could not remove a released chain member');
          result.failures.push({ step: 'orphans', snapshotId: b.snapshotId, error: messageOf(err) });
        }
      }
    }
  }

  /**
   * An in-flight snapshot whose workflow closed, whose Image ref is Ready and whose backup verifies (the top
   * file's sha256 against its recorded checksum, the rest of its chain present at its recorded sizes:
   * storage/chain.ts): moved to BackedUp with its event. Null when there is no such backup (the caller moves
   * the snapshot to Error as before). The move re-checks the state under the row lock.
   */
  async function settleFromVerifiedBackup(
    row: Awaited<ReturnType<typeof inFlightSnapshotsToReconcile>>[number],
    workflowStatus: string,
    reason: string,
    slog: Logger,
  ): Promise<ReconciledSnapshot | null> {
    if (row.status !== 'BackingUp') return null;
    const ref = (await getStoreRefs(pool, row.id)).find((r) => r.role === 'Image' && r.state === 'Ready');
    if (!ref?.checksum) return null;
    const [store, volume] = await Promise.all([findImageStore(pool, ref.storeId), findVolumeLocation(pool, row.volumeId)]);
    const driver = volume && deps.drivers[volume.hypervisor];
    if (!store || !driver) return null;
    const problem = await checkBackupChain(driver, store.path, await getBackupChain(pool, row.id), { full: false });
    if (problem) {
      slog.warn({ problem, installPath: ref.installPath }, 'in-flight snapshot whose workflow closed has a Ready backup that does not verify');
      return null;
    }
    const moved = await transitionSnapshot(pool, row.id, 'BackedUp', {
      set: { physical_size: ref.sizeBytes, next_attempt_at: null, last_error: null },
      event: {
        type: 'SNAPSHOT.BACKUP',
        level: 'WARN',
        description:
          `snapshot ${row.name} moved to BackedUp by the storage GC reconciler: ${reason} while the snapshot was ${row.status}, ` +
          `but its backup was complete and verifies`,
        details: {
          reconciler: true,
          workflowId: row.workflowId,
          workflowStatus,
          reason,
          installPath: ref.installPath,
          checksum: ref.checksum,
          kind: ref.parentSnapshotId ? 'incremental' : 'full',
          parentSnapshotId: ref.parentSnapshotId ?? null,
          bytesWritten: ref.sizeBytes,
        },
      },
    });
    if (!moved.changed) return null;
    slog.warn({ previousState: row.status, workflowStatus, installPath: ref.installPath }, `snapshot moved to BackedUp from its verified backup: ${reason}`);
    return { snapshotId: row.id, volumeId: row.volumeId, workflowId: row.workflowId, previousState: row.status, workflowStatus, reason, to: 'BackedUp' };
  }

  return {
    /**
     * The reconciler: an in-flight snapshot (Allocated, Creating, CreatedOnPrimary, BackingUp) whose workflow
     * is not running (gone, terminated, timed out, ...) can never finish. It is settled from its refs: a
     * BackingUp snapshot whose Image ref is Ready and verifies is BackedUp (the copy finished, only the transition
     * was lost); any other is moved to Error, saying why, so the next step cleans it. Allocated rows inside the
     * grace period are left alone.
     */
    async reconcileInFlightSnapshots(): Promise<ReconcileResult> {
      const result: ReconcileResult = { checked: 0, reconciled: [], deferred: [], skipped: false, failures: [] };
      // First the volumes whose storage work died between its two commits: it needs no Temporal client.
      try {
        const vols = await reconcileStuckVolumes(deps, deps.volumeStaleAfterSeconds !== undefined ? { staleAfterSeconds: deps.volumeStaleAfterSeconds } : {});
        result.volumes = vols.settled;
        for (const f of vols.failures) result.failures.push({ step: 'reconcile', error: `volume ${f.volumeId}: ${f.error}` });
        if (vols.settled.length) log.warn({ volumes: vols.settled }, 'reconciler settled volumes left in a transitional state');
      } catch (err) {
        log.error({ err }, 'reconciling stuck volumes failed; left for the next run');
        result.failures.push({ step: 'reconcile', error: messageOf(err) });
      }
      // Then the deletes (of snapshots, of Destroyed volumes' images) whose process died between intent and result.
      try {
        const dels = await settleDestroyingSnapshots(deps);
        result.deletes = dels.destroyed;
        for (const f of dels.failures) result.failures.push({ step: 'reconcile', snapshotId: f.snapshotId, error: f.error });
        const images = await settleVolumeImageDeletes(deps);
        result.volumeImagesDeleted = images.deleted;
        for (const f of images.failures) result.failures.push({ step: 'reconcile', error: `volume ${f.volumeId}: ${f.error}` });
      } catch (err) {
        log.error({ err }, 'finishing interrupted deletes failed; left for the next run');
        result.failures.push({ step: 'reconcile', error: messageOf(err) });
      }
      if (!deps.client) {
        log.warn('no Temporal client given to the storage GC activities: reconciler skipped');
        return { ...result, skipped: true };
      }
      const rows = await inFlightSnapshotsToReconcile(pool, graceSeconds);
      for (const row of rows) {
        beat({ step: 'reconcile', snapshotId: row.id });
        const slog = log.child({ snapshotId: row.id, volumeId: row.volumeId, workflowId: row.workflowId });
        if (row.status === 'Allocated' && row.young) {
          result.deferred.push(row.id);
          continue;
        }
        result.checked++;
        let workflowStatus: string;
        try {
          const desc = await deps.client.workflow.getHandle(row.workflowId).describe();
          workflowStatus = desc.status.name;
        } catch (err) {
          if (err instanceof WorkflowNotFoundError) {
            workflowStatus = 'NOT_FOUND';
          } else {
            slog.warn({ err }, 'could not describe the workflow of an in-flight snapshot; left for the next run');
            result.failures.push({ step: 'reconcile', snapshotId: row.id, error: messageOf(err) });
            continue;
          }
        }
        if (workflowStatus === 'RUNNING') continue;
        const reason =
          workflowStatus === 'NOT_FOUND'
            ? `workflow ${row.workflowId} does not exist`
            : `workflow ${row.workflowId} is ${workflowStatus}`;
        // Finished work first: the copy may have completed (Image ref Ready) with the workflow ending before the
        // BackedUp transition (its last interruption fell in between). A backup that verifies is the snapshot's
        // backup: BackedUp, never Error (whose cleanup would delete that backup and the primary snapshot).
        try {
          const settled = await settleFromVerifiedBackup(row, workflowStatus, reason, slog);
          if (settled) {
            result.reconciled.push(settled);
            continue;
          }
        } catch (err) {
          slog.warn({ err }, 'could not check the backup of an in-flight snapshot whose workflow closed; left for the next run');
          result.failures.push({ step: 'reconcile', snapshotId: row.id, error: messageOf(err) });
          continue;
        }
        try {
          // Re-checked under the row lock: a snapshot that finished meanwhile (BackedUp) is an illegal move and
          // is left alone; one already in Error is a no-op.
          const moved = await transitionSnapshot(pool, row.id, 'Error', {
            set: { last_error: `${reason} while the snapshot was ${row.status}`, next_attempt_at: null },
            event: {
              type: row.status === 'Allocated' || row.status === 'Creating' ? 'SNAPSHOT.CREATE' : 'SNAPSHOT.BACKUP',
              level: 'ERROR',
              description: `snapshot ${row.name} moved to Error by the storage GC reconciler: ${reason} while the snapshot was ${row.status}`,
              details: { reconciler: true, workflowId: row.workflowId, workflowStatus, reason },
            },
          });
          if (!moved.changed) continue;
          slog.error({ previousState: row.status, workflowStatus }, `snapshot moved to Error: ${reason}`);
          result.reconciled.push({
            snapshotId: row.id,
            volumeId: row.volumeId,
            workflowId: row.workflowId,
            previousState: row.status,
            workflowStatus,
            reason,
            to: 'Error',
          });
        } catch (err) {
          if (err instanceof IllegalSnapshotTransitionError) continue;
          slog.error({ err }, 'reconciling the snapshot failed');
          result.failures.push({ step: 'reconcile', snapshotId: row.id, error: messageOf(err) });
        }
      }
      if (result.reconciled.length) {
        const backedUp = result.reconciled.filter((r) => r.to === 'BackedUp').length;
        log.warn({ count: result.reconciled.length, backedUp, error: result.reconciled.length - backedUp }, 'reconciler settled snapshots whose workflow was gone');
      }
      return result;
    },

    /**
     * Cleans snapshots in Error: removes their backup files (partial or final) from every image store, the
     * primary snapshot if one was left behind, and their snapshot_store_ref rows; then Error → Destroyed.
     * A snapshot whose storage cannot be cleaned stays in Error and is retried on the next run.
     */
    async cleanErrorSnapshots(): Promise<CleanResult> {
      const result: CleanResult = { destroyed: [], failures: [] };
      const rows = await errorSnapshotsToClean(pool);
      if (rows.length === 0) return result;
      const stores = await imageStores();
      for (const row of rows) {
        beat({ step: 'clean', snapshotId: row.id });
        const slog = log.child({ snapshotId: row.id, volumeId: row.volumeId, workflowId: snapshotWorkflowId(row.id) });
        try {
          const driver = deps.drivers[row.hypervisor];
          if (!driver) throw new Error(`no storage driver for ${row.hypervisor}`);
          // Its volume is being migrated or resized: its image may be moving; clean it on a later run.
          if (isTransitionalVolumeState(row.volumeState)) {
            slog.info({ volumeState: row.volumeState }, 'volume of an Error snapshot is busy; cleaning it on the next run');
            continue;
          }
          // A backup later deltas depend on stays, with its Image ref, until nothing does (docs/design.md §14);
          // removeOrphanBackupFiles removes it then.
          const keepBackup = await hasDependentBackups(pool, row.id);
          // The one cleanup a user's delete uses too (storage/cleanup.ts); qemu-img under the volume's image lock,
          // since API requests and snapshot activities in other processes change the same qcow2.
          const { removedFiles, primarySnapshotDeleted } = await removeSnapshotStorage({
            driver,
            target: { accountId: row.accountId, volumeId: row.volumeId, snapshotId: row.id },
            storePaths: keepBackup ? [] : stores.map((st) => st.path),
            volumePath: row.volumePath,
            lock: imageLockRunner(pool, row.volumeId, { logger: slog }),
          });
          if (keepBackup) await setStoreRefState(pool, row.id, 'Primary', 'Destroyed');
          const storeRefsDeleted = keepBackup ? 0 : await retireStoreRefs(pool, row.id, 'delete');
          const moved = await transitionSnapshot(pool, row.id, 'Destroyed', {
            set: { removed: new Date() },
            event: {
              type: 'SNAPSHOT.DELETE',
              description:
                `storage GC removed snapshot ${row.name} (Error): ${removedFiles.length} backup file(s), ` +
                `${storeRefsDeleted} store reference(s)${primarySnapshotDeleted ? ', the primary snapshot' : ''}`,
              details: { storageGc: true, removedFiles, primarySnapshotDeleted, storeRefsDeleted },
            },
          });
          if (!moved.changed) continue;
          slog.info({ removedFiles, primarySnapshotDeleted, storeRefsDeleted }, 'storage GC destroyed an Error snapshot');
          result.destroyed.push({ snapshotId: row.id, volumeId: row.volumeId, removedFiles, primarySnapshotDeleted, storeRefsDeleted });
        } catch (err) {
          if (err instanceof IllegalSnapshotTransitionError) continue;
          slog.error({ err }, 'storage GC could not clean an Error snapshot; it stays in Error until the next run');
          result.failures.push({ step: 'clean', snapshotId: row.id, error: messageOf(err) });
        }
      }
      return result;
    },

    /**
     * Removes files under each image store's `snapshots/<account>/<volume>/` that no healthy snapshot owns:
     * backups of snapshots that have no row or are Destroyed/Error, and temporary (`.partial-`) files of
     * snapshots not BackingUp right now. Files of BackedUp and in-flight snapshots are never touched, nor
     * anything whose name is not a backup's. The files are listed before the rows are read, so a temporary
     * file that appears meanwhile belongs to a snapshot the database already shows as BackingUp.
     */
    async removeOrphanBackupFiles(): Promise<OrphanResult> {
      const result: OrphanResult = { scanned: 0, removed: [], failures: [] };
      await releaseChainMembers(result);
      const found: Array<{ storeId: string; path: string; snapshotId: string; temporary: boolean }> = [];
      const list = async (dir: string): Promise<Dirent[]> => {
        try {
          return await readdir(dir, { withFileTypes: true });
        } catch (err) {
          if (codeOf(err) === 'ENOENT' || codeOf(err) === 'ENOTDIR') return [];
          throw err;
        }
      };
      for (const store of await imageStores()) {
        const root = path.join(store.path, 'snapshots');
        try {
          for (const account of await list(root)) {
            if (!account.isDirectory() || !isUuid(account.name)) continue;
            for (const volume of await list(path.join(root, account.name))) {
              if (!volume.isDirectory() || !isUuid(volume.name)) continue;
              const dir = path.join(root, account.name, volume.name);
              for (const file of await list(dir)) {
                const m = file.isFile() ? BACKUP_FILE.exec(file.name) : null;
                if (!m || !isFileOf(`${m[1]}.${m[2]}`, file.name)) continue;
                found.push({ storeId: store.id, path: path.join(dir, file.name), snapshotId: m[1]!.toLowerCase(), temporary: m[3] !== undefined });
              }
            }
          }
        } catch (err) {
          log.error({ err, storeId: store.id, root }, 'storage GC could not scan an image store');
          result.failures.push({ step: 'orphans', path: root, error: messageOf(err) });
        }
      }
      result.scanned = found.length;
      if (found.length === 0) return result;
      beat({ step: 'orphans', files: found.length });

      const ids = [...new Set(found.map((f) => f.snapshotId))];
      const rows = await snapshotStatuses(pool, ids);
      const byId = new Map(rows.map((r) => [r.id.toLowerCase(), r]));
      // Backups later deltas depend on, and those of deleted snapshots kept for them, are not orphans.
      const kept = await keptBackupSnapshotIds(pool, ids);
      for (const f of found) {
        const row = byId.get(f.snapshotId);
        let reason: string | null = null;
        if (!f.temporary && kept.has(f.snapshotId)) continue;
        if (!row) reason = 'no snapshot row';
        else if (row.status === 'Destroyed' || row.status === 'Error' || row.removed !== null) reason = `snapshot is ${row.status}`;
        else if (f.temporary && row.status !== 'BackingUp') reason = `temporary file of a ${row.status} snapshot`;
        if (!reason) continue;
        try {
          await rm(f.path, { force: true });
          log.info({ snapshotId: f.snapshotId, path: f.path, reason }, 'storage GC removed an orphan backup file');
          result.removed.push({ storeId: f.storeId, path: f.path, snapshotId: f.snapshotId, reason });
        } catch (err) {
          log.error({ err, snapshotId: f.snapshotId, path: f.path }, 'storage GC could not remove an orphan backup file');
          result.failures.push({ step: 'orphans', snapshotId: f.snapshotId, path: f.path, error: messageOf(err) });
        }
      }
      return result;
    },
  };
}

export type StorageGcActivities = ReturnType<typeof createStorageGcActivities>;
