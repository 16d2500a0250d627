import { randomUUID } from 'node:crypto';
import { WithStartWorkflowOperation, WorkflowFailedError, WorkflowUpdateFailedError, type Client } from '@temporalio/client';
import type { Logger } from 'pino';
import { backupRetryFrom } from '../config/settings.js';
import { recordEvent } from '../db/events.js';
import { withTransaction, type Pool, type PoolClient } from '../db/pool.js';
import { readSettings } from '../db/settings.js';
import { failAllocatedSnapshot, getSnapshot, toSnapshotRecord, type SnapshotRecord } from '../db/snapshots.js';
import { NotFoundError, ConflictError, ServiceUnavailableError, SnapshotCreationFailedError, VolumeBusyError } from '../domain/errors.js';
import { isTransitionalVolumeState } from '../db/volumes.js';
import {
  SEARCH_ATTRIBUTES,
  snapshotCreatedUpdate,
  snapshotWorkflowId,
  type SnapshotWorkflowInput,
} from '../workflows/definitions.js';
import type { snapshotWorkflow } from '../workflows/snapshot-workflow.js';
import { assertAllowed, inFlightSnapshots } from './policy-guard.js';

export interface SnapshotServiceDeps {
  pool: Pool;
  client: Client;
  taskQueue: string;
  backupTaskQueue: string;
  logger: Logger;
  /**
   * How long a request may wait for "created" (Update-with-Start: Temporal and a main worker must answer)
   * before it answers 503; default 60 s. Creation on primary takes milliseconds, so this only bounds an outage.
   */
  createDeadlineMs?: number;
}

export interface SnapshotRequest {
  accountId: string;
  volumeId: string;
  name?: string;
  asyncBackup: boolean;
  idempotencyKey?: string;
}

/** Locks the volume (and its VM first, the one lock order everywhere) for a policy-checked change. */
export async function lockVolume(tx: PoolClient, volumeId: string, accountId: string | null) {
  const peek = await tx.query('SELECT vm_id FROM volumes WHERE id = $1 AND removed IS NULL AND ($2::uuid IS NULL OR account_id = $2)', [volumeId, accountId]);
  if (!peek.rows[0]) throw new NotFoundError('volume', volumeId);
  if (peek.rows[0].vm_id) await tx.query('SELECT id FROM virtual_machines WHERE id = $1 FOR UPDATE', [peek.rows[0].vm_id]);
  const { rows } = await tx.query('SELECT * FROM volumes WHERE id = $1 FOR UPDATE', [volumeId]);
  const volume = rows[0];
  // The volume may have been attached or detached while we waited for the lock: lock its current VM too.
  if (volume.vm_id && volume.vm_id !== peek.rows[0].vm_id) {
    await tx.query('SELECT id FROM virtual_machines WHERE id = $1 FOR UPDATE', [volume.vm_id]);
  }
  return volume as { id: string; account_id: string; vm_id: string | null; type: 'ROOT' | 'DATADISK'; state: string; name: string; hypervisor: string; path: string; pool_id: string; size_bytes: number };
}

/** Takes volume snapshots: records the request, then starts the snapshot's workflow with Update-with-Start. */
export function createSnapshotService(deps: SnapshotServiceDeps) {
  const { pool, client, logger } = deps;
  const createDeadlineMs = deps.createDeadlineMs ?? 60_000;

  /**
   * "Created" did not come in time (Temporal unreachable, no main worker polling). A snapshot still Allocated
   * has touched no storage: it goes to Error at once so it does not hold its volume, and its workflow, if it
   * started after all, is ended (its first step would refuse an Error snapshot anyway).
   */
  async function notCreated(snapshot: SnapshotRecord, err: unknown, log: Logger): Promise<Error | null> {
    const reason = 'the snapshot workflow did not start in time (Temporal or its workers unavailable)';
    log.error({ err }, reason);
    const failed = await failAllocatedSnapshot(pool, snapshot.id, reason).catch((e: unknown) => {
      log.error({ err: e }, 'could not move the unstarted snapshot to Error; storage GC will');
      return false;
    });
    if (!failed) {
      // The workflow took the row after all and only the answer was lost: report what it reached.
      const now = await getSnapshot(pool, snapshot.id).catch(() => undefined);
      if (now && now.status !== 'Allocated' && now.status !== 'Creating' && now.status !== 'Error') return null;
    } else {
      await client.workflow
        .getHandle(snapshot.workflowId)
        .terminate(reason)
        .catch(() => undefined);
    }
    return new ServiceUnavailableError('TEMPORAL_UNAVAILABLE', `snapshot not created: ${reason}; try again`, {
      snapshotId: snapshot.id,
      state: failed ? 'Error' : snapshot.status,
    });
  }

  /** Inserts the snapshot row (Allocated) under the volume lock, or returns the one an Idempotency-Key names. */
  async function allocate(req: SnapshotRequest): Promise<{ snapshot: SnapshotRecord; input: SnapshotWorkflowInput; replay: boolean }> {
    return withTransaction(pool, async (tx) => {
      const volume = await lockVolume(tx, req.volumeId, req.accountId);
      if (req.idempotencyKey) {
        const { rows } = await tx.query('SELECT * FROM snapshots WHERE account_id = $1 AND idempotency_key = $2', [req.accountId, req.idempotencyKey]);
        if (rows[0]) {
          const existing = toSnapshotRecord(rows[0]);
          if (existing.volumeId !== req.volumeId) {
            throw new ConflictError('IDEMPOTENCY_KEY_REUSED', 'this Idempotency-Key was used for a snapshot of another volume', { snapshotId: existing.id });
          }
          return { snapshot: existing, input: inputFor(existing, deps.backupTaskQueue), replay: true };
        }
      }
      if (isTransitionalVolumeState(volume.state)) {
        // Migrating/Resizing: a snapshot now would change the image under the running copy (policy table).
        throw new VolumeBusyError(`volume ${volume.id} is ${volume.state}; snapshot it when it is Ready`, volume.id, volume.state);
      }
      if (volume.state !== 'Ready') {
        throw new ConflictError('INVALID_STATE', `volume ${volume.id} is ${volume.state}, not Ready`, { volumeId: volume.id });
      }
      assertAllowed({ kind: 'volume', action: 'snapshot', volumeId: volume.id }, await inFlightSnapshots(tx, { volumeIds: [volume.id] }));
      const all = await readSettings(tx);
      const settings = { ...backupRetryFrom(all), queueTimeoutSeconds: all['backup.queue.timeout'] };
      const id = randomUUID();
      const name = req.name ?? `${volume.name}-${new Date().toISOString().replace(/[-:]/g, '').slice(0, 15)}`;
      const { rows } = await tx.query(
        `INSERT INTO snapshots (id, account_id, volume_id, vm_id, volume_type, name, status, async_backup, workflow_id,
                                idempotency_key, backup_max_attempts, backup_retry_interval, backup_bytes_total, backup_queue_timeout)
         VALUES ($1, $2, $3, $4, $5, $6, 'Allocated', $7, $8, $9, $10, $11, $12, $13) RETURNING *`,
        [id, req.accountId, volume.id, volume.vm_id, volume.type, name, req.asyncBackup, snapshotWorkflowId(id),
          req.idempotencyKey ?? null, settings.maxAttempts, settings.retryIntervalSeconds, volume.size_bytes,
          settings.queueTimeoutSeconds],
      );
      const snapshot = toSnapshotRecord(rows[0]);
      await recordEvent(tx, {
        type: 'SNAPSHOT.CREATE',
        accountId: req.accountId,
        resourceType: 'Snapshot',
        resourceId: id,
        description: `snapshot ${name} of volume ${volume.name} requested (${req.asyncBackup ? 'asynchronous' : 'synchronous'} backup)`,
        details: { snapshotId: id, volumeId: volume.id, asyncBackup: req.asyncBackup, ...settings },
      });
      return { snapshot, input: inputFor(snapshot, deps.backupTaskQueue), replay: false };
    });
  }

  return {
    /**
     * Takes a snapshot. Resolves when the milestone is reached: created on primary with `asyncBackup`,
     * backed up (or failed) without it. Throws SnapshotCreationFailedError when primary creation fails.
     */
    async requestSnapshot(req: SnapshotRequest): Promise<{ snapshot: SnapshotRecord; replay: boolean }> {
      const { snapshot, input, replay } = await allocate(req);
      const log = logger.child({ snapshotId: snapshot.id, volumeId: snapshot.volumeId, workflowId: snapshot.workflowId });
      const startWorkflowOperation = new WithStartWorkflowOperation<typeof snapshotWorkflow>('snapshotWorkflow', {
        workflowId: snapshot.workflowId,
        taskQueue: deps.taskQueue,
        args: [input],
        // A retried request (same Idempotency-Key) joins the running workflow instead of starting another.
        workflowIdConflictPolicy: 'USE_EXISTING',
        typedSearchAttributes: [
          { key: SEARCH_ATTRIBUTES.VolumeId, value: snapshot.volumeId },
          { key: SEARCH_ATTRIBUTES.AccountId, value: snapshot.accountId },
          { key: SEARCH_ATTRIBUTES.SnapshotState, value: snapshot.status },
          ...(snapshot.vmId ? [{ key: SEARCH_ATTRIBUTES.VmId, value: snapshot.vmId }] : []),
        ],
        staticSummary: `Snapshot ${snapshot.name} of ${snapshot.volumeType} volume ${snapshot.volumeId} (${snapshot.asyncBackup ? 'async' : 'sync'} backup)`,
        staticDetails: [
          `snapshot: ${snapshot.id}`,
          `volume: ${snapshot.volumeId} (${snapshot.volumeType})`,
          `vm: ${snapshot.vmId ?? '—'}`,
          `account: ${snapshot.accountId}`,
          `backup: up to ${input.backup.maxAttempts} attempts, ${input.backup.retryIntervalSeconds}s apart`,
        ].join('\n'),
      });
      const finished = ['BackedUp', 'Error', 'Destroying', 'Destroyed'].includes(snapshot.status);
      if (!finished) {
        try {
          await client.withDeadline(Date.now() + createDeadlineMs, () =>
            client.workflow.executeUpdateWithStart(snapshotCreatedUpdate, { startWorkflowOperation }),
          );
          log.info({ asyncBackup: snapshot.asyncBackup, replay }, 'snapshot created on primary');
        } catch (err) {
          if (err instanceof WorkflowUpdateFailedError) {
            const reason = err.cause instanceof Error ? err.cause.message : err.message;
            log.error({ err }, 'snapshot creation on primary failed');
            throw new SnapshotCreationFailedError(reason, snapshot.id);
          }
          const refusal = await notCreated(snapshot, err, log);
          if (refusal) throw refusal;
        }
        if (!snapshot.asyncBackup) {
          try {
            await client.workflow.getHandle(snapshot.workflowId).result();
          } catch (err) {
            if (!(err instanceof WorkflowFailedError)) {
              // Temporal went away while we waited: the backup goes on; the caller can follow it by id.
              log.error({ err }, 'waiting for the synchronous backup failed');
              throw new ServiceUnavailableError('TEMPORAL_UNAVAILABLE', 'Temporal did not answer while waiting for the backup; it goes on, follow the snapshot by its id', {
                snapshotId: snapshot.id,
              });
            }
            log.warn({ err }, 'synchronous backup failed');
          }
        }
      }
      const latest = await getSnapshot(pool, snapshot.id);
      return { snapshot: latest!, replay };
    },
  };
}

export type SnapshotService = ReturnType<typeof createSnapshotService>;

function inputFor(s: SnapshotRecord, backupTaskQueue: string): SnapshotWorkflowInput {
  return {
    snapshotId: s.id,
    volumeId: s.volumeId,
    vmId: s.vmId,
    accountId: s.accountId,
    volumeType: s.volumeType,
    asyncBackup: s.asyncBackup,
    backup: {
      maxAttempts: s.backupMaxAttempts,
      retryIntervalSeconds: s.backupRetryInterval,
      ...(s.backupQueueTimeout ? { queueTimeoutSeconds: s.backupQueueTimeout } : {}),
    },
    backupTaskQueue,
  };
}
