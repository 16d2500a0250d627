import path from 'node:path';
import { ApplicationFailure, Context } from '@temporalio/activity';
import type { Logger } from 'pino';
import { resetScrubState } from '../db/backup-scrub.js';
import { defaultImageStore } from '../db/catalog.js';
import { findImageStore } from '../db/catalog-queries.js';
import { recordEvent } from '../db/events.js';
import { withImageLock } from '../db/image-locks.js';
import type { Pool } from '../db/pool.js';
import {
  BackupSupersededError,
  beginImageRef,
  claimBackupAttempt,
  completeBackup,
  getBackupChain,
  getSnapshot,
  getStoreRefs,
  latestBackupOfVolume,
  ownsBackupAttempt,
  recordCopyFailure,
  setStoreRefState,
  transitionSnapshot,
  updateBackupProgress,
  whileOwningBackup,
  type SnapshotRecord,
} from '../db/snapshots.js';
import { findVolumeLocation, type VolumeLocation } from '../db/volumes.js';
import { IllegalSnapshotTransitionError, canTransition } from '../domain/snapshot-states.js';
import { pausePoint } from '../observability/pause-points.js';
import { checkBackupChain } from '../storage/chain.js';
import type { BackupParent, BackupResult, StorageDriver, StorageDrivers } from '../storage/driver.js';
import { CommandError } from '../storage/exec.js';
import { backupInstallPath } from '../storage/paths.js';
import { ACTIVITY_FAILURE_TYPES, FAILURE_TYPES, nextBackupAttemptAt, type BackupAttemptInput, type SnapshotActivityInput } from '../workflows/definitions.js';

export interface SnapshotActivityDeps {
  pool: Pool;
  drivers: StorageDrivers;
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

const PRIMARY_FAILED = FAILURE_TYPES.primary;
const { copyFailed: COPY_FAILED, interrupted: INTERRUPTED, notFound: NOT_FOUND, illegalTransition: ILLEGAL } =
  ACTIVITY_FAILURE_TYPES;

const messageOf = (err: unknown): string => (err instanceof Error ? err.message : String(err));

/** How often a running copy touches its row even without progress (services/views.ts reads it as alive). */
export const PROGRESS_ALIVE_MS = 5_000;

/** A qemu-img write-lock clash on the image (storage/kvm.ts): another process has it; worth another try. */
const isImageBusy = (err: unknown): boolean => err instanceof Error && err.name === 'ImageBusyError';

/**
 * Runs a state transition; a move the state machine refuses (the row is already further along, or failed)
 * becomes a non-retryable failure of a clear type: retrying cannot make it legal.
 */
async function transitionOrFail(...args: Parameters<typeof transitionSnapshot>): ReturnType<typeof transitionSnapshot> {
  try {
    return await transitionSnapshot(...args);
  } catch (err) {
    if (err instanceof IllegalSnapshotTransitionError) throw ApplicationFailure.nonRetryable(err.message, ILLEGAL);
    throw err;
  }
}

/** Why the activity's cancellation signal fired ('WORKER_SHUTDOWN', 'CANCELLED', 'TIMED_OUT', ...), if it did. */
function cancelReason(ctx: Context): string | null {
  if (!ctx.cancellationSignal.aborted) return null;
  const reason = ctx.cancellationSignal.reason as unknown;
  return reason instanceof Error ? reason.message : String(reason ?? 'CANCELLED');
}

/** Activities that move one snapshot through its lifecycle; created over injected dependencies. */
export function createSnapshotActivities(deps: SnapshotActivityDeps) {
  const { pool } = deps;
  const progressIntervalMs = deps.progressIntervalMs ?? 1000;

  async function load(snapshotId: string): Promise<{ snapshot: SnapshotRecord; volume: VolumeLocation; driver: StorageDriver }> {
    const snapshot = await getSnapshot(pool, snapshotId);
    if (!snapshot) throw ApplicationFailure.nonRetryable(`snapshot ${snapshotId} does not exist`, NOT_FOUND);
    const volume = await findVolumeLocation(pool, snapshot.volumeId);
    if (!volume) throw ApplicationFailure.nonRetryable(`volume ${snapshot.volumeId} does not exist`, NOT_FOUND);
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

  /**
   * The backup of a snapshot already BackedUp (a re-delivery, a reset workflow), after checking its chain by what
   * the database records (links, states, the scrub's marks) and the files' presence and sizes: each file's sha256
   * was established as it was written and is re-checked by the scrub (docs/design.md §14), so a re-delivery does not
   * re-read the whole chain.
   */
  async function existingBackup(snapshot: SnapshotRecord, driver: StorageDriver, log: Logger): Promise<BackupResult> {
    const ref = (await getStoreRefs(pool, snapshot.id)).find((r) => r.role === 'Image' && r.state === 'Ready');
    const store = ref && (await findImageStore(pool, ref.storeId));
    if (!ref || !store || !ref.checksum) {
      throw ApplicationFailure.nonRetryable(`snapshot ${snapshot.id} is BackedUp but has no Ready backup`, ILLEGAL);
    }
    // A delta is checked with its whole chain (docs/design.md §12).
    const problem = await checkBackupChain(driver, store.path, await getBackupChain(pool, snapshot.id), { full: false });
    if (problem) {
      throw ApplicationFailure.nonRetryable(`snapshot ${snapshot.id} is BackedUp but its backup does not verify: ${problem}`, ILLEGAL);
    }
    log.info({ installPath: ref.installPath }, 'snapshot already backed up; its verified backup is the result');
    return { installPath: ref.installPath, sizeBytes: ref.sizeBytes ?? 0, checksum: ref.checksum, parentSnapshotId: ref.parentSnapshotId ?? null };
  }

  /**
   * Chooses, as an attempt starts, whether this backup is a delta and on what (docs/design.md §14), and records
   * the choice in the snapshot's Image ref (Creating), which keeps the parent's backup from being removed. A
   * delta needs `backup.incremental` on for the snapshot, a driver that writes deltas, and a latest backup of the
   * volume in the same store whose chain holds fewer than `snapshot.delta.max` deltas and checks out by its
   * recorded metadata (no file of the chain is read: a member's sha256 was established when it was written, and the
   * scrub re-hashes them and marks a mismatch as a fault on every backup whose chain holds it); otherwise the
   * backup is full, and the reason is logged (and, for a chain with a bad member, recorded as a WARN event).
   */
  async function planBackup(
    snapshot: SnapshotRecord,
    store: { id: string; path: string },
    driver: StorageDriver,
    log: Logger,
    token: number,
  ): Promise<{ parent: (BackupParent & { chainLength: number }) | null; reason: string }> {
    const ids = { accountId: snapshot.accountId, volumeId: snapshot.volumeId, snapshotId: snapshot.id };
    const installPath = backupInstallPath(ids, driver.hypervisor === 'KVM' ? 'qcow2' : 'vhd');
    let parent: (BackupParent & { chainLength: number }) | null = null;
    let reason: string;
    const deltaMax = snapshot.snapshotDeltaMax ?? 16;
    if (!snapshot.backupIncremental) reason = 'backup.incremental is off for this snapshot';
    else if (!driver.incrementalBackups) reason = `${driver.hypervisor} backups are always full`;
    else {
      const latest = await latestBackupOfVolume(pool, { volumeId: snapshot.volumeId, storeId: store.id, snapshotId: snapshot.id });
      if (!latest) reason = 'no earlier backup of the volume in this image store';
      else if (latest.chainLength > deltaMax) reason = `the chain of ${latest.snapshotId} already holds ${latest.chainLength - 1} delta(s) (snapshot.delta.max ${deltaMax})`;
      // A delta across a resize would compare the whole new size with the parent (hours for a sparse disk grown to
      // terabytes): the size changed, so the chain starts again.
      else if (latest.virtualSize !== null && snapshot.size !== null && latest.virtualSize !== snapshot.size) {
        reason = `the volume was resized since the backup of ${latest.snapshotId} (${latest.virtualSize} to ${snapshot.size} bytes)`;
      }
      else {
        const problem = await checkBackupChain(driver, store.path, await getBackupChain(pool, latest.snapshotId), { full: false }).catch(
          (err: unknown) => `verifying it failed: ${messageOf(err)}`,
        );
        if (problem) {
          reason = `the backup of ${latest.snapshotId} does not verify (${problem})`;
          log.warn({ parent: latest.snapshotId, problem }, 'the parent backup does not verify; taking a full backup');
          await recordEvent(pool, {
            type: 'SNAPSHOT.BACKUP',
            level: 'WARN',
            accountId: snapshot.accountId,
            resourceType: 'Snapshot',
            resourceId: snapshot.id,
            description: `full backup instead of a delta: ${reason}`,
            details: { snapshotId: snapshot.id, volumeId: snapshot.volumeId, parentSnapshotId: latest.snapshotId },
          });
        } else {
          parent = { snapshotId: latest.snapshotId, installPath: latest.installPath, chainLength: latest.chainLength };
          reason = `delta on the backup of ${latest.snapshotId}`;
        }
      }
    }
    if (parent && !(await beginImageRef(pool, { snapshotId: snapshot.id, storeId: store.id, installPath, parent, token }))) {
      reason = `the snapshot of ${parent.snapshotId} was deleted meanwhile`;
      parent = null;
    }
    if (!parent) await beginImageRef(pool, { snapshotId: snapshot.id, storeId: store.id, installPath, parent: null, token });
    // A new file is being written: what the scrub knew of an earlier attempt's file no longer applies.
    await resetScrubState(pool, snapshot.id);
    log.info({ parent: parent?.snapshotId ?? null, reason }, parent ? 'incremental backup' : 'full backup');
    return { parent, reason };
  }

  /**
   * Records a failed copy (reason, next attempt, event, and for the workflow's attempt loop the failed attempt,
   * which a re-delivery of the same attempt replays: claimBackupAttempt) and gives the error to throw. Recorded
   * only while this execution owns the backup (`token`); a superseded one records nothing and stops.
   */
  async function copyFailed(
    snapshot: SnapshotRecord,
    attempt: number,
    maxAttempts: number,
    err: unknown,
    classify: boolean,
    log: Logger,
    gone: boolean,
    token: number,
  ): Promise<unknown> {
    const message = messageOf(err);
    const nextAttemptAt = gone ? null : nextBackupAttemptAt(Date.now(), attempt, { maxAttempts, retryIntervalSeconds: snapshot.backupRetryInterval });
    const last = nextAttemptAt === null;
    const recorded = await recordCopyFailure(pool, {
      snapshotId: snapshot.id,
      token,
      // Replayed by a re-delivery of this attempt: only a failure the workflow counts (BackupCopyFailed).
      attempt: classify && !gone ? attempt : null,
      error: message,
      nextAttemptAt,
      event: {
        type: 'SNAPSHOT.BACKUP',
        level: last ? 'ERROR' : 'WARN',
        description: `backup attempt ${attempt} of ${maxAttempts} failed: ${message}`,
        details: { snapshotId: snapshot.id, volumeId: snapshot.volumeId, attempt, nextAttemptAt: nextAttemptAt?.toISOString() ?? null },
      },
    });
    if (!recorded) {
      log.warn({ err }, `backup attempt ${attempt} failed after a newer execution took it over; nothing recorded`);
      return superseded(snapshot, attempt, token, log);
    }
    log.error({ err, maxAttempts, nextAttemptAt }, `backup attempt ${attempt} of ${maxAttempts} failed`);
    if (gone) return ApplicationFailure.nonRetryable(message, NOT_FOUND);
    if (classify) return ApplicationFailure.nonRetryable(message, COPY_FAILED);
    // Executions before the attempt loop: the retry policy refuses SnapshotNotFoundError, which this is not.
    return err instanceof Error && err.name === NOT_FOUND ? ApplicationFailure.retryable(message, COPY_FAILED) : err;
  }

  /**
   * An attempt cut short through no fault of the copy: shown as such at once ("interrupted, resuming"), and
   * retried by Temporal without costing an attempt. Recording it is best effort: the database may be the cause.
   */
  async function interrupted(snapshot: SnapshotRecord, attempt: number, maxAttempts: number, why: string, err: unknown, log: Logger): Promise<ApplicationFailure> {
    const message = `backup attempt ${attempt} of ${maxAttempts} interrupted (${why}); resuming`;
    log.warn({ err }, message);
    await updateBackupProgress(pool, snapshot.id, { lastError: message, nextAttemptAt: null }).catch((e: unknown) =>
      log.warn({ err: e }, 'recording the interruption failed'),
    );
    return ApplicationFailure.retryable(message, INTERRUPTED);
  }

  /**
   * An execution of a backup that a newer one took over (fenced attempts: its token is no longer the row's). It
   * writes nothing and stops; retryable, as an interruption, so it costs no attempt (Temporal no longer waits
   * for it after a heartbeat timeout; if it does, the retry finds the backup done or takes it over in turn).
   */
  function superseded(snapshot: SnapshotRecord, attempt: number, token: number, log: Logger): ApplicationFailure {
    const message = `backup attempt ${attempt} of snapshot ${snapshot.id}: this execution (token ${token}) was superseded by a newer one; it stops`;
    log.warn({ token }, message);
    return ApplicationFailure.retryable(message, INTERRUPTED, { superseded: true, token });
  }

  const isSuperseded = (err: unknown): boolean => err instanceof BackupSupersededError || (err instanceof Error && err.name === 'BackupSupersededError');

  const activities = {
    /**
     * Creates the snapshot on primary storage: Allocated → Creating → CreatedOnPrimary. On the time-to-created
     * path, so four database round trips in the usual case (bench/README.md, P1): the move to Creating beside the
     * volume read, the image lock, its release, and the Primary ref written with CreatedOnPrimary.
     */
    async createSnapshotOnPrimary(input: SnapshotActivityInput): Promise<{ sizeBytes: number }> {
      const { snapshotId } = input;
      const creating = { event: { type: 'SNAPSHOT.CREATE', description: 'creating snapshot {name} on primary storage' } } as const;
      // The usual case: an Allocated row, its volume given. Anything else (a retry, a re-delivery, a row that
      // moved on, an execution from before volumeId was passed) takes the careful path, which reads first.
      const [moved, location] = input.volumeId
        ? await Promise.all([transitionSnapshot(pool, snapshotId, 'Creating', creating).catch(() => undefined), findVolumeLocation(pool, input.volumeId)])
        : [undefined, undefined];
      let snapshot: SnapshotRecord;
      let volume: VolumeLocation;
      let driver: StorageDriver;
      let changed: boolean;
      const fastDriver = location && deps.drivers[location.hypervisor];
      if (moved && location && fastDriver && moved.snapshot.status === 'Creating') {
        ({ snapshot, changed } = moved);
        volume = location;
        driver = fastDriver;
      } else {
        ({ snapshot, volume, driver } = await load(snapshotId));
        if (snapshot.status === 'CreatedOnPrimary' || snapshot.status === 'BackingUp' || snapshot.status === 'BackedUp') {
          return { sizeBytes: snapshot.size ?? 0 };
        }
        if (snapshot.status !== 'Allocated' && snapshot.status !== 'Creating') {
          // A reset or re-delivered execution of a snapshot that failed or was deleted: it is not created again.
          throw ApplicationFailure.nonRetryable(`snapshot ${snapshotId} is ${snapshot.status}; it cannot be created again`, PRIMARY_FAILED);
        }
        ({ changed } = await transitionOrFail(pool, snapshotId, 'Creating', creating));
        // This call moved it only if no earlier one (the fast path above, in this very attempt) did.
        changed ||= moved?.changed === true;
      }
      const log = logFor(snapshot);
      // Storage is touched only after the row is Creating: if this call moved it there, no earlier execution
      // (a retry, or a local activity re-run after a workflow-task timeout) can have created the snapshot.
      // The volume's size is stable meanwhile: resize is forbidden while the snapshot is in flight.
      const fresh = changed ? { volumeSizeBytes: volume.sizeBytes } : undefined;
      let sizeBytes: number;
      try {
        // Serialised with every other writer of this image in any process (snapshot delete, revert, GC, resize).
        ({ sizeBytes } = await withImageLock(pool, snapshot.volumeId, () => driver.createSnapshot(volume.path, snapshotId, fresh), { logger: log }));
      } catch (err) {
        if (isImageBusy(err)) {
          // Another process holds the image (a clash the cross-process image lock cannot see): try again.
          log.warn({ err }, 'the volume image is busy; creating the snapshot on primary storage will be retried');
          throw ApplicationFailure.retryable(`the volume is busy: ${messageOf(err)}`, 'ImageBusyError');
        }
        log.error({ err }, 'creating the snapshot on primary storage failed');
        // The caller reads this reason: the tool's own words, not its command line (that stays in the log).
        const reason = err instanceof CommandError ? `${path.basename(err.command.split(' ')[0]!)}: ${err.stderr || `exit ${err.exitCode}`}` : messageOf(err);
        throw ApplicationFailure.nonRetryable(`creating the snapshot on primary storage failed: ${reason}`, PRIMARY_FAILED);
      }
      // The Primary ref and CreatedOnPrimary commit together: neither is ever seen without the other.
      await transitionOrFail(pool, snapshotId, 'CreatedOnPrimary', {
        set: { size: sizeBytes },
        event: { type: 'SNAPSHOT.CREATE', description: `snapshot ${snapshot.name} created on primary storage` },
        storeRef: { snapshotId, role: 'Primary', storeId: volume.poolId, installPath: `${volume.path}@${snapshotId}`, state: 'Ready', sizeBytes, checksum: null },
      });
      log.info({ sizeBytes }, 'snapshot created on primary storage');
      await pausePoint('created-on-primary', snapshot.volumeId, { snapshotId });
      return { sizeBytes };
    },

    /**
     * One backup attempt: copies the snapshot into the image store (temporary name, verify, rename), with
     * progress in heartbeats and in the database. CreatedOnPrimary → BackingUp → BackedUp.
     *
     * Delivered at least once, so it answers for every state it may meet: a snapshot already BackedUp with a
     * verified Image ref returns that backup again (a re-delivery, a reset workflow); one that failed or was
     * deleted is refused without a retry. With `attempt` in the input (the workflow's attempt loop), a failure of
     * the copy itself is reported as `BackupCopyFailed` and anything that cut the attempt short (its worker
     * stopping, the database unreachable) as a retryable `BackupInterrupted`, which costs no attempt.
     */
    async backupSnapshotToSecondary(input: BackupAttemptInput): Promise<BackupResult> {
      const { snapshotId } = input;
      const ctx = Context.current();
      const classify = input.attempt !== undefined;
      const attempt = input.attempt ?? ctx.info.attempt;
      const { snapshot, volume, driver } = await load(snapshotId);
      const maxAttempts = input.maxAttempts ?? snapshot.backupMaxAttempts;
      // `attempt` on a log line is Temporal's (interruptions count there); the copy attempt is `backupAttempt`.
      const log = logFor(snapshot).child({ backupAttempt: attempt });

      if (snapshot.status === 'BackedUp') return existingBackup(snapshot, driver, log);
      if (snapshot.status !== 'CreatedOnPrimary' && snapshot.status !== 'BackingUp') {
        throw ApplicationFailure.nonRetryable(`snapshot ${snapshotId} is ${snapshot.status}; it is not backed up`, ILLEGAL);
      }
      const store = await defaultImageStore(pool);
      await transitionOrFail(pool, snapshotId, 'BackingUp', {
        event: { type: 'SNAPSHOT.BACKUP', description: `backing up snapshot ${snapshot.name} to secondary storage` },
      });
      // Fenced attempts: this execution takes the next token; every older one still running is superseded.
      const claim = await claimBackupAttempt(pool, snapshotId, attempt);
      if (claim.kind === 'failed') {
        // This attempt's copy failed and was recorded, but its worker died before Temporal heard of it: the
        // failure is reported again (and counted), not copied over.
        log.warn({ error: claim.error }, `backup attempt ${attempt} already failed; reporting its failure again`);
        throw ApplicationFailure.nonRetryable(claim.error, COPY_FAILED);
      }
      if (claim.kind === 'state') {
        if (claim.status === 'BackedUp') return existingBackup(snapshot, driver, log);
        throw ApplicationFailure.nonRetryable(`snapshot ${snapshotId} is ${claim.status}; it is not backed up`, ILLEGAL);
      }
      const { token } = claim;
      log.info({ maxAttempts, token }, `backup attempt ${attempt} of ${maxAttempts} started`);
      const { parent } = await planBackup(snapshot, store, driver, log, token).catch((err: unknown) => {
        throw isSuperseded(err) ? superseded(snapshot, attempt, token, log) : err;
      });

      let latest = { bytesDone: 0, bytesTotal: snapshot.size ?? 0 };
      let written = -1;
      // Progress reaches the heartbeat and the database on a timer: qemu-img reports in bursts (a rate-limited
      // copy prints 90 % at once, then nothing for seconds), and a silent copy must neither time out nor look stuck.
      let writtenAt = Date.now();
      let recording: Promise<unknown> | undefined;
      copying.add(ctx);
      const ticker = setInterval(() => {
        ctx.heartbeat(latest);
        // Unchanged progress is still written now and then: the row's `updated` is how a reader tells a slow
        // copy from one whose worker is gone (services/views.ts).
        if (latest.bytesDone === written && Date.now() - writtenAt < PROGRESS_ALIVE_MS) return;
        // One write at a time: on a slow database they would pile up and commit out of order.
        if (recording) return;
        written = latest.bytesDone;
        writtenAt = Date.now();
        recording = updateBackupProgress(pool, snapshotId, latest)
          .catch((err: unknown) => log.warn({ err }, 'recording progress failed'))
          .finally(() => (recording = undefined));
      }, progressIntervalMs);
      let result: BackupResult;
      // Held by a fault test (observability/pause-points.ts) from the first progress until it lets the copy publish.
      let copyingHeld: Promise<void> | undefined;
      try {
        result = await driver.backupSnapshot(
          volume.path,
          store.path,
          { accountId: snapshot.accountId, volumeId: snapshot.volumeId, snapshotId },
          {
            signal: ctx.cancellationSignal,
            onProgress: (p) => {
              latest = p;
              if (!copyingHeld && p.bytesDone > 0 && p.bytesDone < p.bytesTotal) {
                copyingHeld = pausePoint(parent ? 'copying-delta' : 'copying', snapshot.volumeId, { snapshotId, bytesDone: p.bytesDone });
              }
            },
            ...(parent ? { parent: { snapshotId: parent.snapshotId, installPath: parent.installPath } } : {}),
            lock: (fn) => withImageLock(pool, snapshot.volumeId, fn, { logger: log }),
            token,
            publish: async (commit) => {
              await copyingHeld;
              return whileOwningBackup(pool, snapshotId, token, commit);
            },
          },
        );
      } catch (err) {
        const stopped = cancelReason(ctx);
        if (classify && stopped === 'WORKER_SHUTDOWN') throw await interrupted(snapshot, attempt, maxAttempts, 'its worker is stopping', err, log);
        // Cancelled by the workflow, or the server no longer waits for this execution: nothing to record.
        if (stopped) throw err;
        // Taken over by a newer execution (its rename refused, or its temporary file removed as stale): that
        // one owns the backup now; this one records nothing.
        if (isSuperseded(err) || !(await ownsBackupAttempt(pool, snapshotId, token).catch(() => true))) throw superseded(snapshot, attempt, token, log);
        // "No such snapshot" costs nothing until a look under the image lock confirms it: a writer volsnap does
        // not serialise (an operator's qemu-img, a QEMU) may have been rewriting the snapshot table. Confirmed,
        // it is final (compensation goes on); otherwise the attempt was cut short, not failed.
        const missing = err instanceof Error && err.name === NOT_FOUND;
        const gone =
          missing && !(await withImageLock(pool, snapshot.volumeId, () => driver.hasSnapshot(volume.path, snapshotId), { logger: log }).catch(() => true));
        if (missing && !gone && classify) {
          throw await interrupted(snapshot, attempt, maxAttempts, 'the snapshot table was read while it was being rewritten', err, log);
        }
        throw await copyFailed(snapshot, attempt, maxAttempts, err, classify, log, gone, token);
      } finally {
        clearInterval(ticker);
        // None may land after the result below (it would overwrite the final progress).
        await recording;
      }
      await pausePoint('copied', snapshot.volumeId, { snapshotId });
      let completed: Awaited<ReturnType<typeof completeBackup>>;
      try {
        // The Ready ref (exactly the file this execution hashed and renamed into place) and BackedUp commit
        // together, and only while this execution owns the backup.
        completed = await completeBackup(pool, {
          token,
          ref: {
            snapshotId,
            role: 'Image',
            storeId: store.id,
            installPath: result.installPath,
            state: 'Ready',
            sizeBytes: result.sizeBytes,
            checksum: result.checksum,
            parentSnapshotId: result.parentSnapshotId ?? null,
            chainLength: result.parentSnapshotId && parent ? parent.chainLength + 1 : 1,
          },
          event: {
            type: 'SNAPSHOT.BACKUP',
            description: result.parentSnapshotId
              ? `snapshot ${snapshot.name} backed up to secondary storage (incremental: ${result.sizeBytes} bytes on the backup of ${result.parentSnapshotId})`
              : `snapshot ${snapshot.name} backed up to secondary storage (full: ${result.sizeBytes} bytes)`,
            details: {
              attempt,
              installPath: result.installPath,
              checksum: result.checksum,
              kind: result.parentSnapshotId ? 'incremental' : 'full',
              parentSnapshotId: result.parentSnapshotId ?? null,
              bytesWritten: result.sizeBytes,
            },
          },
        });
      } catch (err) {
        // The copy is whole; only its bookkeeping failed (the database went away): the next execution finds the
        // file under its final name and redoes the copy, which is cheap next to losing an attempt.
        if (classify && !(err instanceof ApplicationFailure)) {
          throw await interrupted(snapshot, attempt, maxAttempts, 'recording the finished copy failed', err, log);
        }
        throw err;
      }
      // Superseded after its file was renamed into place: the newer execution replaces that file and records its
      // own; this one must not touch the final name.
      if (completed.outcome === 'superseded') throw superseded(snapshot, attempt, token, log);
      if (completed.outcome === 'state') {
        throw ApplicationFailure.nonRetryable(`snapshot ${snapshotId} is ${completed.status}; its backup is not recorded`, ILLEGAL);
      }
      log.info({ installPath: result.installPath, sizeBytes: result.sizeBytes, checksum: result.checksum }, 'backup completed');
      return result;
    },

    /**
     * Compensation: deletes the snapshot from primary storage, unless the snapshot is backed up after all (its
     * Image ref is Ready, or the row is BackedUp or being deleted by the user): a re-delivered or reset
     * compensation must never destroy a good snapshot. Idempotent.
     */
    async deletePrimarySnapshot({ snapshotId }: { snapshotId: string }): Promise<{ deleted: boolean; reason?: string }> {
      const { snapshot, volume, driver } = await load(snapshotId);
      const log = logFor(snapshot);
      const imageReady = (await getStoreRefs(pool, snapshotId)).some((r) => r.role === 'Image' && r.state === 'Ready');
      if (imageReady || snapshot.status === 'BackedUp' || snapshot.status === 'Destroying' || snapshot.status === 'Destroyed') {
        const reason = imageReady ? 'its backup is Ready' : `it is ${snapshot.status}`;
        log.warn({ status: snapshot.status, imageReady }, `primary snapshot kept: ${reason}`);
        return { deleted: false, reason };
      }
      await withImageLock(pool, snapshot.volumeId, () => driver.deleteSnapshot(volume.path, snapshotId), { logger: log });
      await setStoreRefState(pool, snapshotId, 'Primary', 'Destroyed');
      await recordEvent(pool, {
        type: 'SNAPSHOT.DELETE',
        accountId: snapshot.accountId,
        resourceType: 'Snapshot',
        resourceId: snapshotId,
        description: `primary snapshot ${snapshot.name} deleted after the backup failed`,
        details: { snapshotId, volumeId: snapshot.volumeId },
      });
      log.warn('primary snapshot deleted (compensation)');
      await pausePoint('compensated', snapshot.volumeId, { snapshotId });
      return { deleted: true };
    },

    /**
     * Moves the snapshot to Error with the reason; storage GC cleans it later. Only from states that allow it:
     * a snapshot already BackedUp (a re-delivered or reset execution) or Destroyed keeps its state.
     */
    async markSnapshotError({ snapshotId, reason }: { snapshotId: string; reason: string }): Promise<{ changed: boolean; state: string }> {
      const snapshot = await getSnapshot(pool, snapshotId);
      if (!snapshot) throw ApplicationFailure.nonRetryable(`snapshot ${snapshotId} does not exist`, NOT_FOUND);
      if (snapshot.status !== 'Error' && !canTransition(snapshot.status, 'Error')) {
        deps.logger.warn({ snapshotId, status: snapshot.status, reason }, `snapshot kept ${snapshot.status}: it cannot move to Error`);
        return { changed: false, state: snapshot.status };
      }
      const creating = snapshot.status === 'Allocated' || snapshot.status === 'Creating';
      const { changed } = await transitionOrFail(pool, snapshotId, 'Error', {
        set: { last_error: reason, next_attempt_at: null },
        event: {
          type: creating ? 'SNAPSHOT.CREATE' : 'SNAPSHOT.BACKUP',
          level: 'ERROR',
          description: `snapshot ${snapshot.name} failed: ${reason}`,
        },
      });
      if (changed) logFor(snapshot).error({ reason }, 'snapshot moved to Error');
      return { changed, state: 'Error' };
    },
  };
  const beating = { ...activities, backupSnapshotToSecondary: heartbeatFromTheStart(activities.backupSnapshotToSecondary, progressIntervalMs) };
  return deps.metrics ? withBackupMetrics(beating, deps.metrics) : beating;
}

/** Backup executions whose progress ticker runs (it heartbeats with their progress from then on). */
const copying = new WeakSet<Context>();

/**
 * A backup heartbeats from its first second, whatever it does (loading, planning, checking a chain, setting up
 * the delta's export) and not only once the copy runs: a heartbeat timeout (30 s) there would count as an
 * interruption on every attempt. Once the attempt's own progress ticker runs, it heartbeats instead.
 */
function heartbeatFromTheStart(backup: (input: BackupAttemptInput) => Promise<BackupResult>, intervalMs: number) {
  return async (input: BackupAttemptInput): Promise<BackupResult> => {
    const ctx = Context.current();
    ctx.heartbeat();
    const ticker = setInterval(() => {
      if (!copying.has(ctx)) ctx.heartbeat();
    }, intervalMs);
    try {
      return await backup(input);
    } finally {
      clearInterval(ticker);
      copying.delete(ctx);
    }
  };
}

/** Wraps the backup activity with the metrics hooks; a failing hook never fails the backup. */
function withBackupMetrics<T extends { backupSnapshotToSecondary(input: BackupAttemptInput): Promise<BackupResult> }>(
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
    async backupSnapshotToSecondary(input: BackupAttemptInput): Promise<BackupResult> {
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
