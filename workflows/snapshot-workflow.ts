import {
  ActivityFailure,
  type ActivityOptions,
  type LocalActivityOptions,
  ApplicationFailure,
  CancellationScope,
  TimeoutFailure,
  allHandlersFinished,
  condition,
  isCancellation,
  log,
  patched,
  proxyActivities,
  proxyLocalActivities,
  setCurrentDetails,
  sleep,
  setHandler,
  upsertSearchAttributes,
} from '@temporalio/workflow';
import type { SnapshotActivities } from '../activities/snapshot-activities.js';
import { decide, vmActionDecisions, type InFlightSnapshot } from '../domain/policy.js';
import { isInProgress, type SnapshotState } from '../domain/snapshot-states.js';
import {
  ACTIVITY_FAILURE_TYPES,
  FAILURE_TYPES,
  SEARCH_ATTRIBUTES,
  mayRunQuery,
  snapshotCreatedUpdate,
  statusQuery,
  type SnapshotWorkflowInput,
  type SnapshotWorkflowResult,
} from './definitions.js';
import type { BackupResult } from '../storage/driver.js';

/** Short bookkeeping activities on the main task queue. */
const bookkeeping = proxyActivities<SnapshotActivities>({
  startToCloseTimeout: '1 minute',
  retry: { maximumAttempts: 5, initialInterval: '1 second', nonRetryableErrorTypes: [ACTIVITY_FAILURE_TYPES.notFound] },
});

/** Creating the primary snapshot: a definite storage failure is final ("exactly as before the feature"). */
const PRIMARY_OPTIONS: LocalActivityOptions & ActivityOptions = {
  startToCloseTimeout: '2 minutes',
  retry: { maximumAttempts: 3, initialInterval: '1 second', nonRetryableErrorTypes: [FAILURE_TYPES.primary] },
  summary: 'create snapshot on primary storage',
};
const primary = proxyActivities<SnapshotActivities>(PRIMARY_OPTIONS);
/**
 * The same as a local activity: it runs inside the first workflow task, so "created" reaches the caller one
 * workflow task sooner (the time-to-created the product exists for). Executions started before this change
 * replay the regular activity (see PRIMARY_AS_LOCAL_ACTIVITY).
 */
const primaryLocal = proxyLocalActivities<SnapshotActivities>(PRIMARY_OPTIONS);
const PRIMARY_AS_LOCAL_ACTIVITY = 'create-primary-as-local-activity';
/**
 * A running VM's disk is snapshotted by its QEMU, on its host: the activity goes to the host's queue (its input
 * names it). Executions started before this change have no such input and never reach the patch.
 */
const PRIMARY_ON_HOST_QUEUE = 'create-primary-on-host-queue';
/**
 * The compensation of a running VM's snapshot deletes it on the VM's host too (by its QEMU, if the VM still
 * runs); a host whose worker does not take it in time leaves it to any main worker, which reaches the host's
 * libvirt by its URI. Executions from before this change compensate on the main queue.
 */
const COMPENSATE_ON_HOST_QUEUE = 'compensate-on-host-queue';

/**
 * Executions that reached a failure before this change recorded the innermost cause of the error chain (e.g. a
 * bare "ENOENT: ... mkdir" without the "image store is unusable" context); newer ones record the message the
 * activity threw, which carries its context. The message is an activity input, so the change is patched.
 */
const LAST_ERROR_FROM_ACTIVITY = 'last-error-from-activity-message';

/**
 * Executions from before this change let Temporal's retry policy count backup attempts, so a worker that
 * stopped or died mid-copy (a deploy, a crash) cost an attempt and a `backup.retry.interval` wait, and a
 * re-delivered activity on a finished snapshot burnt every attempt and then compensated. Newer ones count
 * attempts here: only a failure of the copy itself (`BackupCopyFailed`) advances the count and waits the
 * interval on a durable timer; interruptions (heartbeat timeout, worker shutdown, database unreachable) are
 * retried by Temporal at once; an illegal state is final at once.
 */
const BACKUP_ATTEMPT_LOOP = 'backup-attempt-loop';
/** Interruptions retried per attempt before the attempt counts as failed: a crash loop must still end. */
const MAX_INTERRUPTIONS = 50;

/** The primary snapshot of a running VM's disk, on its host's queue; a host with no worker fails it clearly. */
async function createOnHost(host: NonNullable<SnapshotWorkflowInput['primaryHost']>, ids: { snapshotId: string; volumeId: string }): Promise<void> {
  const onHost = proxyActivities<SnapshotActivities>({
    ...PRIMARY_OPTIONS,
    taskQueue: host.taskQueue,
    // The caller is waiting for "created": a host whose worker is gone fails the snapshot instead.
    scheduleToStartTimeout: `${host.timeoutSeconds} seconds`,
    summary: `create snapshot on primary storage, on host ${host.name}`,
  });
  try {
    await onHost.createSnapshotOnPrimary(ids);
  } catch (err) {
    if (err instanceof ActivityFailure && err.cause instanceof TimeoutFailure && err.cause.timeoutType === 'SCHEDULE_TO_START') {
      throw ApplicationFailure.nonRetryable(
        `host ${host.name} did not take the snapshot within ${host.timeoutSeconds} s (its host worker is not running); nothing was created`,
        FAILURE_TYPES.primary,
      );
    }
    throw err;
  }
}

/** The compensation on the VM's host; on the main queue when no host worker takes it in time. */
async function deleteOnHost(host: NonNullable<SnapshotWorkflowInput['primaryHost']>, ids: { snapshotId: string; volumeId: string }) {
  const onHost = proxyActivities<SnapshotActivities>({
    startToCloseTimeout: '1 minute',
    scheduleToStartTimeout: `${host.timeoutSeconds} seconds`,
    retry: { maximumAttempts: 5, initialInterval: '1 second', nonRetryableErrorTypes: [ACTIVITY_FAILURE_TYPES.notFound] },
    taskQueue: host.taskQueue,
    summary: `delete the primary snapshot, on host ${host.name}`,
  });
  try {
    return await onHost.deletePrimarySnapshot(ids);
  } catch (err) {
    if (!(err instanceof ActivityFailure && err.cause instanceof TimeoutFailure && err.cause.timeoutType === 'SCHEDULE_TO_START')) throw err;
    log.warn('the host did not take the compensation; deleting through any main worker', { snapshotId: ids.snapshotId, host: host.name });
    return bookkeeping.deletePrimarySnapshot(ids);
  }
}

function failureType(err: unknown): string | undefined {
  const cause = err instanceof ActivityFailure ? err.cause : err;
  return cause instanceof ApplicationFailure ? (cause.type ?? undefined) : undefined;
}

function errorMessage(err: unknown): string {
  let e: unknown = err;
  if (patched(LAST_ERROR_FROM_ACTIVITY)) {
    // Only Temporal's own wrapper goes: its cause is what the activity threw (or the timeout).
    if (e instanceof ActivityFailure && e.cause) e = e.cause;
  } else {
    while (e instanceof Error && e.cause instanceof Error) e = e.cause;
  }
  return e instanceof Error ? e.message : String(e);
}

/**
 * One snapshot: create on primary, tell the caller at once (update `snapshotCreated`), back up on the backup
 * task queue under the configured retry policy, and delete the primary snapshot if the last attempt fails.
 */
export async function snapshotWorkflow(input: SnapshotWorkflowInput): Promise<SnapshotWorkflowResult> {
  const { snapshotId, backup } = input;
  // What every activity is given: the volume saves the worker a database read (workflows/definitions.ts).
  const ids = { snapshotId, volumeId: input.volumeId };
  let state: SnapshotState = 'Allocated';
  let lastError: string | null = null;

  const self = (): InFlightSnapshot[] =>
    isInProgress(state) ? [{ snapshotId, volumeId: input.volumeId, volumeType: input.volumeType, vmId: input.vmId }] : [];

  setHandler(snapshotCreatedUpdate, async () => {
    await condition(() => state !== 'Allocated' && state !== 'Creating');
    if (state === 'Error' && lastError !== null) {
      throw ApplicationFailure.nonRetryable(lastError, FAILURE_TYPES.primary, { snapshotId });
    }
    return { snapshotId, state };
  });
  setHandler(mayRunQuery, (op) => decide(op, self()));
  setHandler(statusQuery, () => ({
    snapshotId,
    volumeId: input.volumeId,
    state,
    lastError,
    vmId: input.vmId,
    vmActions: input.vmId ? vmActionDecisions(input.vmId, self()) : null,
  }));

  const moveTo = (next: SnapshotState, details: string): void => {
    state = next;
    upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.SnapshotState, value: next }]);
    setCurrentDetails(`**${next}** — ${details}`);
  };

  moveTo('Creating', 'creating the snapshot on primary storage');
  try {
    if (input.primaryHost !== undefined && patched(PRIMARY_ON_HOST_QUEUE)) await createOnHost(input.primaryHost, ids);
    else if (patched(PRIMARY_AS_LOCAL_ACTIVITY)) await primaryLocal.createSnapshotOnPrimary(ids);
    else await primary.createSnapshotOnPrimary(ids);
  } catch (err) {
    lastError = errorMessage(err);
    log.error('primary snapshot failed', { snapshotId, error: lastError });
    await CancellationScope.nonCancellable(() => bookkeeping.markSnapshotError({ ...ids, reason: lastError! }));
    moveTo('Error', `creation on primary failed: ${lastError}`);
    // Let the caller's update see the failure before the workflow closes.
    await condition(allHandlersFinished);
    throw ApplicationFailure.nonRetryable(lastError, FAILURE_TYPES.primary, { snapshotId });
  }
  moveTo('CreatedOnPrimary', 'created on primary; backup is next');

  const legacyBackup = (): Promise<BackupResult> => {
    const backupActivities = proxyActivities<SnapshotActivities>({
      taskQueue: input.backupTaskQueue,
      startToCloseTimeout: '24 hours',
      // Progress heartbeats every second: a dead worker's attempt is noticed within 30 s and retried, with
      // room for a loaded machine's slow heartbeat round trips.
      heartbeatTimeout: '30 seconds',
      retry: {
        maximumAttempts: backup.maxAttempts,
        initialInterval: `${backup.retryIntervalSeconds} seconds`,
        maximumInterval: `${backup.retryIntervalSeconds} seconds`,
        backoffCoefficient: 1,
        nonRetryableErrorTypes: [ACTIVITY_FAILURE_TYPES.notFound],
      },
      summary: `back up to secondary (up to ${backup.maxAttempts} attempts, ${backup.retryIntervalSeconds}s apart)`,
    });
    return backupActivities.backupSnapshotToSecondary(ids);
  };

  const backupWithAttemptLoop = async (): Promise<BackupResult> => {
    for (let attempt = 1; ; attempt++) {
      const copy = proxyActivities<SnapshotActivities>({
        taskQueue: input.backupTaskQueue,
        startToCloseTimeout: '24 hours',
        heartbeatTimeout: '30 seconds',
        // `backup.queue.timeout`: with no backup worker to take it, the snapshot fails instead of holding its
        // volume forever.
        ...(backup.queueTimeoutSeconds ? { scheduleToStartTimeout: `${backup.queueTimeoutSeconds} seconds` } : {}),
        retry: {
          maximumAttempts: MAX_INTERRUPTIONS,
          initialInterval: '1 second',
          backoffCoefficient: 2,
          maximumInterval: '30 seconds',
          nonRetryableErrorTypes: [
            ACTIVITY_FAILURE_TYPES.copyFailed,
            ACTIVITY_FAILURE_TYPES.notFound,
            ACTIVITY_FAILURE_TYPES.illegalTransition,
          ],
        },
        summary: `back up to secondary: attempt ${attempt} of ${backup.maxAttempts}`,
      });
      try {
        return await copy.backupSnapshotToSecondary({ ...ids, attempt, maxAttempts: backup.maxAttempts });
      } catch (err) {
        if (err instanceof ActivityFailure && err.cause instanceof TimeoutFailure && err.cause.timeoutType === 'SCHEDULE_TO_START') {
          throw ApplicationFailure.nonRetryable(
            `no backup worker took the backup within ${backup.queueTimeoutSeconds} s (backup.queue.timeout)`,
            'BackupQueueTimeout',
          );
        }
        if (isCancellation(err) || attempt >= backup.maxAttempts || failureType(err) !== ACTIVITY_FAILURE_TYPES.copyFailed) {
          throw err;
        }
        lastError = errorMessage(err);
        log.warn('backup attempt failed; waiting for the next one', { snapshotId, attempt, error: lastError });
        setCurrentDetails(
          `**BackingUp** — attempt ${attempt} of ${backup.maxAttempts} failed: ${lastError}; ` +
            `next attempt in ${backup.retryIntervalSeconds}s`,
        );
        await sleep(`${backup.retryIntervalSeconds} seconds`);
        setCurrentDetails(`**BackingUp** — backing up to secondary storage: attempt ${attempt + 1} of ${backup.maxAttempts}`);
      }
    }
  };

  moveTo('BackingUp', `backing up to secondary storage: up to ${backup.maxAttempts} attempts, ${backup.retryIntervalSeconds}s apart`);
  try {
    const result = patched(BACKUP_ATTEMPT_LOOP) ? await backupWithAttemptLoop() : await legacyBackup();
    // Details only (no command): which kind of backup it is (docs/design.md §14), readable in the Web UI.
    const kind = result.parentSnapshotId
      ? `incremental on the backup of snapshot ${result.parentSnapshotId}, ${result.sizeBytes} bytes written`
      : `${result.sizeBytes} bytes written`;
    moveTo('BackedUp', `backed up to ${result.installPath} (${kind})`);
    await condition(allHandlersFinished);
    return { snapshotId, state: 'BackedUp', ...result };
  } catch (err) {
    const cancelled = isCancellation(err);
    lastError = cancelled ? 'backup cancelled' : errorMessage(err);
    log.error('backup failed; deleting the primary snapshot', { snapshotId, error: lastError, cancelled });
    // Compensation must run even while the workflow is being cancelled.
    const kept = await CancellationScope.nonCancellable(async () => {
      const compensation = input.primaryHost !== undefined && patched(COMPENSATE_ON_HOST_QUEUE)
        ? await deleteOnHost(input.primaryHost, ids)
        : await bookkeeping.deletePrimarySnapshot(ids);
      // Older workers answered nothing; only an explicit "kept" changes the outcome.
      if (compensation?.deleted === false) return compensation.reason ?? 'kept';
      await bookkeeping.markSnapshotError({ ...ids, reason: lastError! });
      return null;
    });
    if (kept !== null) {
      log.warn('backup step failed but the snapshot is backed up after all; nothing deleted', { snapshotId, error: lastError, kept });
      setCurrentDetails(`**${state}** — a repeated backup step failed (${lastError}); primary snapshot kept: ${kept}`);
      await condition(allHandlersFinished);
      throw ApplicationFailure.nonRetryable(`snapshot ${snapshotId} kept: ${kept}; ${lastError}`, FAILURE_TYPES.backup, { snapshotId });
    }
    moveTo('Error', `backup failed: ${lastError}; primary snapshot deleted`);
    await condition(allHandlersFinished);
    if (cancelled) throw err;
    throw ApplicationFailure.nonRetryable(
      `backup of snapshot ${snapshotId} failed after ${backup.maxAttempts} attempt(s): ${lastError}`,
      FAILURE_TYPES.backup,
      { snapshotId },
    );
  }
}
