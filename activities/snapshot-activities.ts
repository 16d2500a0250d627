import { ApplicationFailure, Context } from '@temporalio/activity';
import type { Logger } from 'pino';
import { defaultImageStore } from '../db/catalog.js';
import { recordEvent } from '../db/events.js';
import type { Pool } from '../db/pool.js';
import {
  getSnapshot,
  setStoreRefState,
  transitionSnapshot,
  updateBackupProgress,
  upsertStoreRef,
  type SnapshotRecord,
} from '../db/snapshots.js';
import type { BackupResult, StorageDriver } from '../storage/driver.js';

export interface SnapshotActivityDeps {
  pool: Pool;
  drivers: Partial<Record<'KVM' | 'XenServer', StorageDriver>>;
  logger: Logger;
  /** How often progress reaches the database and the heartbeat (ms). */
  progressIntervalMs?: number;
  /** Optional metrics hooks around each backup attempt (observability/metrics.ts implements them). */
  metrics?: BackupMetricsHooks;
}

/** Called around every backup attempt; implementations must not throw. */
export interface BackupMetricsHooks {
  backupStarted?(): void;
  backupSucceeded?(r: { bytes: number; durationSeconds: number }): void;
  backupFailed?(r: { durationSeconds: number }): void;
}

interface VolumeLocation {
  path: string;
  hypervisor: 'KVM' | 'XenServer';
  poolId: string;
  sizeBytes: number;
}

const PRIMARY_FAILED = 'PrimarySnapshotFailed';

const messageOf = (err: unknown): string => (err instanceof Error ? err.message : String(err));

/** Activities that move one snapshot through its lifecycle; created over injected dependencies. */
export function createSnapshotActivities(deps: SnapshotActivityDeps) {
  const { pool } = deps;
  const progressIntervalMs = deps.progressIntervalMs ?? 1000;

  async function load(snapshotId: string): Promise<{ snapshot: SnapshotRecord; volume: VolumeLocation; driver: StorageDriver }> {
    const snapshot = await getSnapshot(pool, snapshotId);
    if (!snapshot) throw ApplicationFailure.nonRetryable(`snapshot ${snapshotId} does not exist`, 'SnapshotNotFoundError');
    const { rows } = await pool.query<Omit<VolumeLocation, 'sizeBytes'> & { sizeBytes: string }>(
      'SELECT path, hypervisor, pool_id AS "poolId", size_bytes AS "sizeBytes" FROM volumes WHERE id = $1',
      [snapshot.volumeId],
    );
    const volume = rows[0] && { ...rows[0], sizeBytes: Number(rows[0].sizeBytes) };
    if (!volume) throw ApplicationFailure.nonRetryable(`volume ${snapshot.volumeId} does not exist`, 'SnapshotNotFoundError');
    const driver = deps.drivers[volume.hypervisor];
    if (!driver) throw ApplicationFailure.nonRetryable(`no storage driver for ${volume.hypervisor}`, PRIMARY_FAILED);
    return { snapshot, volume, driver };
  }

  function logFor(snapshot: SnapshotRecord): Logger {
    const info = Context.current().info;
    return deps.logger.child({
      snapshotId: snapshot.id,
      volumeId: snapshot.volumeId,
      workflowId: info.workflowExecution?.workflowId,
      activity: info.activityType,
      attempt: info.attempt,
    });
  }

  const activities = {
    /** Creates the snapshot on primary storage: Allocated → Creating → CreatedOnPrimary. */
    async createSnapshotOnPrimary({ snapshotId }: { snapshotId: string }): Promise<{ sizeBytes: number }> {
      const { snapshot, volume, driver } = await load(snapshotId);
      const log = logFor(snapshot);
      if (snapshot.status === 'CreatedOnPrimary' || snapshot.status === 'BackingUp' || snapshot.status === 'BackedUp') {
        return { sizeBytes: snapshot.size ?? 0 };
      }
      const { changed } = await transitionSnapshot(pool, snapshotId, 'Creating', {
        event: { type: 'SNAPSHOT.CREATE', description: `creating snapshot ${snapshot.name} on primary storage` },
      });
      // Storage is touched only after the row is Creating: if this call moved it there, no earlier execution
      // (a retry, or a local activity re-run after a workflow-task timeout) can have created the snapshot.
      // The volume's size is stable meanwhile: resize is forbidden while the snapshot is in flight.
      const fresh = changed ? { volumeSizeBytes: volume.sizeBytes } : undefined;
      let sizeBytes: number;
      try {
        ({ sizeBytes } = await driver.createSnapshot(volume.path, snapshotId, fresh));
      } catch (err) {
        log.error({ err }, 'creating the snapshot on primary storage failed');
        throw ApplicationFailure.nonRetryable(`creating the snapshot on primary storage failed: ${messageOf(err)}`, PRIMARY_FAILED);
      }
      await upsertStoreRef(pool, {
        snapshotId,
        role: 'Primary',
        storeId: volume.poolId,
        installPath: `${volume.path}@${snapshotId}`,
        state: 'Ready',
        sizeBytes,
        checksum: null,
      });
      await transitionSnapshot(pool, snapshotId, 'CreatedOnPrimary', {
        set: { size: sizeBytes },
        event: { type: 'SNAPSHOT.CREATE', description: `snapshot ${snapshot.name} created on primary storage` },
      });
      log.info({ sizeBytes }, 'snapshot created on primary storage');
      return { sizeBytes };
    },

    /**
     * One backup attempt: copies the snapshot into the image store (temporary name, verify, rename), with
     * progress in heartbeats and in the database. CreatedOnPrimary → BackingUp → BackedUp.
     */
    async backupSnapshotToSecondary({ snapshotId }: { snapshotId: string }): Promise<BackupResult> {
      const ctx = Context.current();
      const attempt = ctx.info.attempt;
      const { snapshot, volume, driver } = await load(snapshotId);
      const log = logFor(snapshot);
      const store = await defaultImageStore(pool);
      await transitionSnapshot(pool, snapshotId, 'BackingUp', {
        event: { type: 'SNAPSHOT.BACKUP', description: `backing up snapshot ${snapshot.name} to secondary storage` },
      });
      await updateBackupProgress(pool, snapshotId, { attempts: attempt, bytesDone: 0, nextAttemptAt: null });
      log.info({ maxAttempts: snapshot.backupMaxAttempts }, `backup attempt ${attempt} of ${snapshot.backupMaxAttempts} started`);

      let latest = { bytesDone: 0, bytesTotal: snapshot.size ?? 0 };
      let written = -1;
      // Progress reaches the heartbeat and the database on a timer: qemu-img reports in bursts (a rate-limited
      // copy prints 90 % at once, then nothing for seconds), and a silent copy must neither time out nor look stuck.
      const ticker = setInterval(() => {
        ctx.heartbeat(latest);
        if (latest.bytesDone === written) return;
        written = latest.bytesDone;
        void updateBackupProgress(pool, snapshotId, latest).catch((err) => log.warn({ err }, 'recording progress failed'));
      }, progressIntervalMs);
      try {
        const result = await driver.backupSnapshot(
          volume.path,
          store.path,
          { accountId: snapshot.accountId, volumeId: snapshot.volumeId, snapshotId },
          {
            signal: ctx.cancellationSignal,
            onProgress: (p) => {
              latest = p;
            },
          },
        );
        await upsertStoreRef(pool, {
          snapshotId,
          role: 'Image',
          storeId: store.id,
          installPath: result.installPath,
          state: 'Ready',
          sizeBytes: result.sizeBytes,
          checksum: result.checksum,
        });
        await updateBackupProgress(pool, snapshotId, { bytesDone: latest.bytesTotal, bytesTotal: latest.bytesTotal, lastError: null });
        await transitionSnapshot(pool, snapshotId, 'BackedUp', {
          set: { physical_size: result.sizeBytes, next_attempt_at: null },
          event: {
            type: 'SNAPSHOT.BACKUP',
            description: `snapshot ${snapshot.name} backed up to secondary storage`,
            details: { attempt, installPath: result.installPath, checksum: result.checksum },
          },
        });
        log.info({ installPath: result.installPath, sizeBytes: result.sizeBytes, checksum: result.checksum }, 'backup completed');
        return result;
      } catch (err) {
        const message = messageOf(err);
        const last = attempt >= snapshot.backupMaxAttempts || (err instanceof Error && err.name === 'SnapshotNotFoundError');
        const nextAttemptAt = last ? null : new Date(Date.now() + snapshot.backupRetryInterval * 1000);
        log.error({ err, maxAttempts: snapshot.backupMaxAttempts, nextAttemptAt }, `backup attempt ${attempt} of ${snapshot.backupMaxAttempts} failed`);
        await updateBackupProgress(pool, snapshotId, { lastError: message, nextAttemptAt });
        await recordEvent(pool, {
          type: 'SNAPSHOT.BACKUP',
          level: last ? 'ERROR' : 'WARN',
          accountId: snapshot.accountId,
          resourceType: 'Snapshot',
          resourceId: snapshotId,
          description: `backup attempt ${attempt} of ${snapshot.backupMaxAttempts} failed: ${message}`,
          details: { snapshotId, volumeId: snapshot.volumeId, attempt, nextAttemptAt: nextAttemptAt?.toISOString() ?? null },
        });
        if (err instanceof Error && err.name === 'SnapshotNotFoundError') {
          throw ApplicationFailure.nonRetryable(message, 'SnapshotNotFoundError');
        }
        throw err;
      } finally {
        clearInterval(ticker);
      }
    },

    /** Compensation: deletes the snapshot from primary storage. Idempotent. */
    async deletePrimarySnapshot({ snapshotId }: { snapshotId: string }): Promise<void> {
      const { snapshot, volume, driver } = await load(snapshotId);
      await driver.deleteSnapshot(volume.path, snapshotId);
      await setStoreRefState(pool, snapshotId, 'Primary', 'Destroyed');
      await recordEvent(pool, {
        type: 'SNAPSHOT.DELETE',
        accountId: snapshot.accountId,
        resourceType: 'Snapshot',
        resourceId: snapshotId,
        description: `primary snapshot ${snapshot.name} deleted after the backup failed`,
        details: { snapshotId, volumeId: snapshot.volumeId },
      });
      logFor(snapshot).warn('primary snapshot deleted (compensation)');
    },

    /** Moves the snapshot to Error with the reason; storage GC cleans it later. */
    async markSnapshotError({ snapshotId, reason }: { snapshotId: string; reason: string }): Promise<void> {
      const snapshot = await getSnapshot(pool, snapshotId);
      if (!snapshot) throw ApplicationFailure.nonRetryable(`snapshot ${snapshotId} does not exist`, 'SnapshotNotFoundError');
      const creating = snapshot.status === 'Allocated' || snapshot.status === 'Creating';
      await transitionSnapshot(pool, snapshotId, 'Error', {
        set: { last_error: reason, next_attempt_at: null },
        event: {
          type: creating ? 'SNAPSHOT.CREATE' : 'SNAPSHOT.BACKUP',
          level: 'ERROR',
          description: `snapshot ${snapshot.name} failed: ${reason}`,
        },
      });
      logFor(snapshot).error({ reason }, 'snapshot moved to Error');
    },
  };
  return deps.metrics ? withBackupMetrics(activities, deps.metrics) : activities;
}

/** Wraps the backup activity with the metrics hooks; a failing hook never fails the backup. */
function withBackupMetrics<T extends { backupSnapshotToSecondary(input: { snapshotId: string }): Promise<BackupResult> }>(
  activities: T,
  hooks: BackupMetricsHooks,
): T {
  const safe = (fn: () => void) => {
    try {
      fn();
    } catch {
      // metrics must never break a backup
    }
  };
  const backup = activities.backupSnapshotToSecondary;
  return {
    ...activities,
    async backupSnapshotToSecondary(input: { snapshotId: string }): Promise<BackupResult> {
      const started = performance.now();
      const seconds = () => (performance.now() - started) / 1000;
      safe(() => hooks.backupStarted?.());
      try {
        const result = await backup(input);
        safe(() => hooks.backupSucceeded?.({ bytes: result.sizeBytes, durationSeconds: seconds() }));
        return result;
      } catch (err) {
        safe(() => hooks.backupFailed?.({ durationSeconds: seconds() }));
        throw err;
      }
    },
  };
}

export type SnapshotActivities = ReturnType<typeof createSnapshotActivities>;
