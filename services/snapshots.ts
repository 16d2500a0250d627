import { setMaxListeners } from 'node:events';
import { createHash, randomUUID } from 'node:crypto';
import {
  WithStartWorkflowOperation,
  WorkflowExecutionAlreadyStartedError,
  WorkflowFailedError,
  WorkflowUpdateFailedError,
  type Client,
} from '@temporalio/client';
import type { Logger } from 'pino';
import { backupRetryFrom, incrementalFrom } from '../config/settings.js';
import { findHost, findImageStore, findStoragePool } from '../db/catalog-queries.js';
import { hostTaskQueue } from '../compute/host-queue.js';
import { recordEvent } from '../db/events.js';
import { findIdempotentRequest, releaseIdempotencyKey, rememberIdempotentRequest } from '../db/idempotency.js';
import { withImageLock } from '../db/image-locks.js';
import { lockSnapshotWithVolume, lockVolumeWithVm } from '../db/locks.js';
import { withTransaction, type PoolClient, type Queryable } from '../db/pool.js';
import { readSettings } from '../db/settings.js';
import { findAccount } from '../db/accounts.js';
import {
  failAllocatedSnapshot,
  getSnapshot,
  getStoreRefs,
  getStoreRefsOf,
  inFlightSnapshots,
  insertSnapshot,
  listSnapshots,
  searchSnapshots,
  transitionSnapshot,
  type SnapshotRecord,
  type StoreRefRecord,
} from '../db/snapshots.js';
import { findVm, type VmRecord } from '../db/vms.js';
import {
  beginVolumeOperation,
  busyVolumes,
  endVolumeOperation,
  insertVolume,
  isTransitionalVolumeState,
  updateVolume,
  volumesOfVms,
  type PendingVolumeOperation,
  type VolumeRecord,
} from '../db/volumes.js';
import {
  ConflictError,
  IdempotencyKeyMismatchError,
  NotFoundError,
  ServiceUnavailableError,
  SnapshotCreationFailedError,
  ValidationError,
  VolumeBusyError,
} from '../domain/errors.js';
import type { SnapshotAction } from '../domain/policy.js';
import type { SnapshotState } from '../domain/snapshot-states.js';
import { BackupCorruptError } from '../storage/common.js';
import type { RestoreMember } from '../storage/driver.js';
import { volumePath as kvmVolumePath } from '../storage/paths.js';
import {
  SEARCH_ATTRIBUTES,
  snapshotCreatedUpdate,
  snapshotWorkflowId,
  type SnapshotWorkflowInput,
} from '../workflows/definitions.js';
import type { snapshotWorkflow } from '../workflows/snapshot-workflow.js';
import { pausePoint } from '../observability/pause-points.js';
import { recordBackupFault } from './backup-faults.js';
import { restoreChain } from './restore-chain.js';
import { ownerScope, type Caller } from './caller.js';
import { defaultStoragePool, driverFor, type ServiceDeps } from './deps.js';
import { assertAllowed, assertNotBusy } from './policy-guard.js';
import { withStorageTransaction, type OnRollback } from './storage-transaction.js';
import { snapshotView, volumeView, type SnapshotView, type VolumeView } from './views.js';
import { withVolumeHeartbeat } from './volume-operations.js';
import { finishSnapshotDelete } from './snapshot-delete.js';
import { settleVolumeOperation } from './volume-reconcile.js';

/*
 * The snapshot lifecycle as the API and its callers see it, in one module: a request (row under the volume's
 * lock, then the workflow by Update-with-Start), listing and reading, and the operations on an existing snapshot
 * (delete, revert, new volume from its backup) under the parallel-operation policy. The workflow
 * (workflows/snapshot-workflow.ts) and its activities move the snapshot through the rest of its states.
 */

export interface SnapshotServiceDeps extends Omit<ServiceDeps, 'drivers'> {
  /** Storage drivers by hypervisor; operations on storage refuse a hypervisor without one. */
  drivers?: ServiceDeps['drivers'];
  client: Client;
  taskQueue: string;
  backupTaskQueue: string;
  /**
   * How long a request may wait for "created" (Update-with-Start: Temporal and a main worker must answer)
   * before it answers 503; default 60 s. Creation on primary takes milliseconds, so this only bounds an outage.
   */
  createDeadlineMs?: number;
  /** The web console's address: each workflow's details link to the snapshot there. */
  consoleUrl?: string;
  /**
   * KVM VMs run on libvirt hosts, each with its task queue (KVM_COMPUTE=libvirt): a running VM's disk is
   * snapshotted on its host, by its QEMU.
   */
  hostTaskQueues?: { timeoutSeconds: number };
}

/** A snapshot request of the workflow-facing kind: `accountId` owns the volume (tests, benchmarks, scripts). */
export interface SnapshotRequest {
  accountId: string;
  volumeId: string;
  name?: string;
  asyncBackup: boolean;
  idempotencyKey?: string;
}

export interface TakeSnapshotInput {
  name?: string;
  asyncBackup: boolean;
  idempotencyKey?: string;
}

/** A snapshot request's outcome: `replay` when an Idempotency-Key named an earlier request. */
export interface TakenSnapshot {
  snapshot: SnapshotView;
  replay: boolean;
}

/** What a snapshot request reached: the row and its store refs as read after the milestone. */
interface RequestOutcome {
  snapshot: SnapshotRecord;
  refs: StoreRefRecord[];
  replay: boolean;
}

/** The synchronous backup of a snapshot failed after its last attempt (the snapshot is in Error). */
export class SnapshotBackupFailedError extends ConflictError {
  constructor(s: SnapshotRecord) {
    super('SNAPSHOT_BACKUP_FAILED', `snapshot ${s.id} was created but its backup failed: ${s.lastError ?? 'unknown error'}`, {
      snapshotId: s.id,
      volumeId: s.volumeId,
      state: s.status,
    });
  }
}

interface LockedSnapshot {
  snapshot: SnapshotRecord;
  volume: VolumeRecord;
  vm: VmRecord | null;
}

/** Owner scope of a request: the account that must own the volume, or null for any (an admin). */
interface ScopedRequest extends TakeSnapshotInput {
  ownerId: string | null;
  volumeId: string;
}

/**
 * What an Idempotency-Key stands for: the volume and the body's fields as sent (an omitted name is not the
 * generated one). sha256 hex of their JSON.
 */
export function requestFingerprint(volumeId: string, req: Pick<TakeSnapshotInput, 'name' | 'asyncBackup'>): string {
  return createHash('sha256').update(JSON.stringify([volumeId, req.name ?? null, req.asyncBackup]), 'utf8').digest('hex');
}

export function createSnapshotService(deps: SnapshotServiceDeps) {
  const { pool, client, logger } = deps;
  const drivers = deps.drivers ?? {};
  /** Aborted by close(): requests in flight give up their Temporal calls; new ones are refused. */
  const stopping = new AbortController();
  // Every request in flight listens on it (client.withAbortSignal): no "possible leak" warning past 10.
  setMaxListeners(0, stopping.signal);
  const inFlight = new Set<Promise<unknown>>();
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

  /**
   * Inserts the snapshot row (Allocated) under the volume's lock (VM first: services/locks.ts), after the policy
   * check, or returns the one an Idempotency-Key names. The volume is read once, under the lock.
   */
  async function allocate(req: ScopedRequest): Promise<{ snapshot: SnapshotRecord; input: SnapshotWorkflowInput; replay: boolean; labels: WorkflowLabels }> {
    try {
      return await allocateLocked(req);
    } catch (err) {
      // The same key sent at once for two volumes (two locks, one key): the loser's insert hits the key's
      // unique index. Never a second snapshot.
      if (req.idempotencyKey && (err as { code?: unknown; constraint?: unknown }).code === '23505' && /idempotency/.test(String((err as { constraint?: unknown }).constraint))) {
        throw new ConflictError('IDEMPOTENCY_KEY_REUSED', 'this Idempotency-Key is being used by a concurrent request for another volume', {});
      }
      throw err;
    }
  }

  /**
   * Account names for the workflow's Web UI labels, remembered for a minute: a label set once at start, where a
   * rename showing a minute late does no harm, and one database round trip less on the time-to-created path.
   */
  const accountNames = new Map<string, { name: string; until: number }>();
  async function accountName(db: Queryable, accountId: string): Promise<string> {
    const known = accountNames.get(accountId);
    if (known && known.until > Date.now()) return known.name;
    const name = (await findAccount(db, accountId))?.name ?? accountId;
    if (accountNames.size > 10_000) accountNames.clear();
    accountNames.set(accountId, { name, until: Date.now() + 60_000 });
    return name;
  }

  async function allocateLocked(req: ScopedRequest): Promise<{ snapshot: SnapshotRecord; input: SnapshotWorkflowInput; replay: boolean; labels: WorkflowLabels }> {
    // Settings need no lock: read beside the transaction's own reads, on a connection asked for before the
    // transaction's (so the pool grants it first and a full pool cannot deadlock on it), one round trip less.
    const settingsRead = readSettings(pool);
    settingsRead.catch(() => undefined);
    return withTransaction(pool, async (tx) => {
      // Concurrent duplicates (same key, same volume) queue on this lock; the second finds the first's row.
      const { volume, vm } = await lockVolumeWithVm(tx, req.volumeId, req.ownerId);
      const all = await settingsRead;
      const ttlSeconds = all['idempotency.key.ttl'];
      const fingerprint = requestFingerprint(volume.id, req);
      const labels = async (): Promise<WorkflowLabels> => ({
        volumeName: volume.name,
        vmName: vm?.name ?? null,
        accountName: await accountName(tx, volume.accountId),
        sizeBytes: volume.sizeBytes,
      });
      if (req.idempotencyKey) {
        // The snapshot belongs to the volume's account, also when an admin takes it.
        const found = await findIdempotentRequest(tx, volume.accountId, req.idempotencyKey, ttlSeconds);
        if (found && (found.expired || found.snapshot.status === 'Destroyed')) {
          // Expired, or its snapshot deleted: the key is free again and this is a new request.
          await releaseIdempotencyKey(tx, found.snapshot.id);
        } else if (found) {
          const existing = found.snapshot;
          if (existing.volumeId !== volume.id) {
            throw new ConflictError('IDEMPOTENCY_KEY_REUSED', 'this Idempotency-Key was used for a snapshot of another volume', { snapshotId: existing.id });
          }
          if (found.fingerprint !== null && found.fingerprint !== fingerprint) {
            throw new IdempotencyKeyMismatchError(existing.id);
          }
          return { snapshot: existing, input: inputFor(existing, deps.backupTaskQueue), replay: true, labels: await labels() };
        }
      }
      if (isTransitionalVolumeState(volume.state)) {
        // Migrating/Resizing: a snapshot now would change the image under the running copy (policy table).
        throw new VolumeBusyError(`volume ${volume.id} is ${volume.state}; snapshot it when it is Ready`, volume.id, volume.state);
      }
      if (volume.state !== 'Ready') {
        throw new ConflictError('INVALID_STATE', `volume ${volume.id} is ${volume.state}, not Ready`, { volumeId: volume.id });
      }
      // A service built only to start workflows (no drivers: they live in the workers) leaves this to them.
      if (deps.drivers) driverFor({ drivers }, volume.hypervisor);
      assertAllowed({ kind: 'volume', action: 'snapshot', volumeId: volume.id }, await inFlightSnapshots(tx, { volumeIds: [volume.id] }));
      const settings = { ...backupRetryFrom(all), queueTimeoutSeconds: all['backup.queue.timeout'], ...incrementalFrom(all) };
      const id = randomUUID();
      const name = req.name ?? `${volume.name}-${new Date().toISOString().replace(/[-:]/g, '').slice(0, 15)}`;
      const snapshot = await insertSnapshot(tx, {
        id,
        accountId: volume.accountId,
        volumeId: volume.id,
        vmId: volume.vmId,
        volumeType: volume.type,
        name,
        asyncBackup: req.asyncBackup,
        workflowId: snapshotWorkflowId(id),
        idempotencyKey: req.idempotencyKey ?? null,
        backupMaxAttempts: settings.maxAttempts,
        backupRetryInterval: settings.retryIntervalSeconds,
        backupQueueTimeout: settings.queueTimeoutSeconds,
        backupBytesTotal: volume.sizeBytes,
        backupIncremental: settings.incremental,
        snapshotDeltaMax: settings.deltaMax,
      });
      if (req.idempotencyKey) await rememberIdempotentRequest(tx, id, fingerprint, ttlSeconds);
      // The VM's QEMU may hold the image (any state but Stopped): the snapshot is taken on its host.
      const liveHost = deps.hostTaskQueues && vm?.hypervisor === 'KVM' && vm.state !== 'Stopped' && vm.hostId ? await findHost(tx, vm.hostId) : undefined;
      const primaryHost = liveHost && deps.hostTaskQueues
        ? { name: liveHost.name, taskQueue: hostTaskQueue(deps.taskQueue, liveHost.name), timeoutSeconds: deps.hostTaskQueues.timeoutSeconds }
        : undefined;
      await recordEvent(tx, {
        type: 'SNAPSHOT.CREATE',
        accountId: volume.accountId,
        resourceType: 'Snapshot',
        resourceId: id,
        description: `snapshot ${name} of volume ${volume.name} requested (${req.asyncBackup ? 'asynchronous' : 'synchronous'} backup)`,
        details: { snapshotId: id, volumeId: volume.id, asyncBackup: req.asyncBackup, ...settings, ...(liveHost ? { host: liveHost.name } : {}) },
      });
      return { snapshot, input: { ...inputFor(snapshot, deps.backupTaskQueue), ...(primaryHost ? { primaryHost } : {}) }, replay: false, labels: await labels() };
    });
  }

  /**
   * Takes a snapshot. Resolves when the milestone is reached: created on primary with `asyncBackup`, backed up
   * (or failed) without it. Throws SnapshotCreationFailedError when primary creation fails.
   */
  function request(req: ScopedRequest): Promise<RequestOutcome> {
    if (stopping.signal.aborted) return Promise.reject(new ServiceUnavailableError('SERVICE_UNAVAILABLE', 'the service is shutting down; retry shortly'));
    const p = requestOnce(req);
    inFlight.add(p);
    const forget = () => inFlight.delete(p);
    p.then(forget, forget);
    return p;
  }

  async function requestOnce(req: ScopedRequest): Promise<RequestOutcome> {
    return startAndAwait(await allocate(req));
  }

  /** Starts an allocated snapshot's workflow (Update-with-Start) and waits for its milestone. */
  async function startAndAwait(allocated: Awaited<ReturnType<typeof allocate>>): Promise<RequestOutcome> {
    const { snapshot, input, replay, labels } = allocated;
    const log = logger.child({ snapshotId: snapshot.id, volumeId: snapshot.volumeId, workflowId: snapshot.workflowId });
    await pausePoint('allocated', snapshot.volumeId, { snapshotId: snapshot.id });
    const startWorkflowOperation = new WithStartWorkflowOperation<typeof snapshotWorkflow>('snapshotWorkflow', {
      workflowId: snapshot.workflowId,
      taskQueue: deps.taskQueue,
      args: [input],
      // A retried request (same Idempotency-Key) joins the running workflow instead of starting another, and a
      // closed one is never run again: each snapshot has one run, whatever its row says.
      workflowIdConflictPolicy: 'USE_EXISTING',
      workflowIdReusePolicy: 'REJECT_DUPLICATE',
      typedSearchAttributes: [
        { key: SEARCH_ATTRIBUTES.VolumeId, value: snapshot.volumeId },
        { key: SEARCH_ATTRIBUTES.AccountId, value: snapshot.accountId },
        { key: SEARCH_ATTRIBUTES.SnapshotState, value: snapshot.status },
        ...(snapshot.vmId ? [{ key: SEARCH_ATTRIBUTES.VmId, value: snapshot.vmId }] : []),
      ],
      // What the Temporal Web UI's list and workflow page show: names an operator reads at a glance (the ids stay
      // in the search attributes and below). Static: set once at start, so replay-safe.
      ...workflowText(snapshot, input, labels, deps.consoleUrl),
    });
    const finished = ['BackedUp', 'Error', 'Destroying', 'Destroyed'].includes(snapshot.status);
    if (!finished) {
      try {
        await client.withAbortSignal(stopping.signal, () =>
          client.withDeadline(Date.now() + createDeadlineMs, () =>
            client.workflow.executeUpdateWithStart(snapshotCreatedUpdate, { startWorkflowOperation }),
          ),
        );
        log.info({ asyncBackup: snapshot.asyncBackup, replay }, 'snapshot created on primary');
      } catch (err) {
        if (err instanceof WorkflowUpdateFailedError) {
          const reason = err.cause instanceof Error ? err.cause.message : err.message;
          log.error({ err }, 'snapshot creation on primary failed');
          throw new SnapshotCreationFailedError(reason, snapshot.id);
        }
        if (err instanceof WorkflowExecutionAlreadyStartedError) {
          // Its one run has closed (a retry of a request whose row it left in flight): the row answers;
          // storage GC's reconciler settles it from its refs.
          log.warn({ status: snapshot.status }, 'the snapshot workflow has already closed; answering the row as it is');
        } else {
          const refusal = await notCreated(snapshot, err, log);
          if (refusal) throw refusal;
        }
      }
      if (!snapshot.asyncBackup) {
        try {
          await client.withAbortSignal(stopping.signal, () => client.workflow.getHandle(snapshot.workflowId).result());
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
    // Row and refs side by side (two pooled connections, one round trip of latency).
    const [latest, refs] = await Promise.all([getSnapshot(pool, snapshot.id), getStoreRefs(pool, snapshot.id)]);
    return { snapshot: latest!, refs, replay };
  }

  /** Admins see host paths in the last error whole; other callers shortened (services/views.ts). */
  const hostPaths = (caller: Caller) => caller.role === 'admin';

  async function view(caller: Caller, s: SnapshotRecord): Promise<SnapshotView> {
    return snapshotView(s, await getStoreRefs(pool, s.id), Date.now(), hostPaths(caller));
  }

  /** Locks the snapshot (VM, volume first), checks the policy table for `action` on it, then runs `fn`. */
  function withLockedSnapshot<T>(
    caller: Caller,
    id: string,
    action: SnapshotAction,
    fn: (tx: PoolClient, locked: LockedSnapshot, onRollback: OnRollback) => Promise<T>,
  ): Promise<T> {
    return withStorageTransaction(pool, logger, async (tx, onRollback) => {
      const locked = await lockSnapshotWithVolume(tx, id, ownerScope(caller));
      const op = { kind: 'snapshot', action, snapshotId: id } as const;
      assertAllowed(op, await inFlightSnapshots(tx, { snapshotIds: [id] }));
      // Its volume Migrating/Resizing, or a new volume being created from its backup: 409 VOLUME_BUSY at once.
      assertNotBusy(op, await busyVolumes(tx, { volumeIds: [locked.volume.id], snapshotIds: [id] }), locked.volume.id);
      return fn(tx, locked, onRollback);
    });
  }

  function requireState(s: SnapshotRecord, states: SnapshotState[], action: string): void {
    if (!states.includes(s.status)) {
      throw new ConflictError('INVALID_STATE', `snapshot ${s.id} is ${s.status}; ${action} needs it ${states.join(' or ')}`, { snapshotId: s.id, state: s.status });
    }
  }

  /**
   * The snapshot's Ready backup and the chain a restore of it reads (restoreChain: refused before anything is
   * created when the record already says it is bad).
   */
  async function imageRef(tx: PoolClient, s: SnapshotRecord): Promise<{ ref: StoreRefRecord; storePath: string; chain: RestoreMember[] }> {
    const ref = (await getStoreRefs(tx, s.id)).find((r) => r.role === 'Image' && r.state === 'Ready');
    const store = ref && (await findImageStore(tx, ref.storeId));
    if (!ref || !store) throw new ConflictError('BACKUP_MISSING', `snapshot ${s.id} has no usable backup in an image store`, { snapshotId: s.id });
    return { ref, storePath: store.path, chain: await restoreChain(tx, s.id) };
  }

  /**
   * A restore that found a member of its chain not matching its checksum (storage BackupCorruptError, nothing
   * created or changed): the member is marked faulty with its dependants (best effort), and the request refused
   * with BACKUP_CORRUPT. Any other error passes as it is.
   */
  async function restoreRefused(err: unknown, snapshotId: string, chain: RestoreMember[] | undefined): Promise<never> {
    if (!(err instanceof BackupCorruptError)) throw err;
    const member = chain?.find((m) => m.snapshotId === err.snapshotId);
    if (member) {
      await recordBackupFault(pool, logger, { snapshotId: member.snapshotId, checksum: member.checksum, fault: err.fault, foundBy: 'restore' }).catch((e: unknown) =>
        logger.error({ err: e }, 'recording the faulty backup failed'),
      );
    }
    throw new ConflictError('BACKUP_CORRUPT', err.message, { snapshotId, faultySnapshotId: err.snapshotId });
  }

  return {
    /**
     * Stops taking requests, cancels the Temporal calls of those in flight and waits (at most `timeoutMs`) for
     * them to settle: the Temporal connection may close only then (a call retrying on a closed channel throws
     * outside any handler and takes the process down). The stack calls it before closing the connection.
     */
    async close(timeoutMs = 10_000): Promise<void> {
      stopping.abort();
      if (inFlight.size === 0) return;
      logger.info({ requests: inFlight.size }, 'waiting for snapshot requests in flight to settle');
      await Promise.race([Promise.allSettled([...inFlight]), new Promise((r) => setTimeout(r, timeoutMs).unref())]);
    },

    /** Takes a snapshot of a volume `req.accountId` owns; see `request`. */
    requestSnapshot(req: SnapshotRequest): Promise<RequestOutcome> {
      const { accountId, ...rest } = req;
      return request({ ...rest, ownerId: accountId });
    },

    /**
     * Takes a snapshot of a volume through the snapshot service (Update-with-Start). Resolves at the milestone;
     * a failed creation, or a failed synchronous backup, is an error carrying the snapshot's id.
     */
    async take(caller: Caller, volumeId: string, input: TakeSnapshotInput): Promise<TakenSnapshot> {
      const { snapshot, refs, replay } = await request({ ...input, ownerId: ownerScope(caller), volumeId });
      if (snapshot.status === 'Error') {
        // A replayed request whose snapshot never reached primary storage answers as the first one did.
        if (!refs.some((r) => r.role === 'Primary')) throw new SnapshotCreationFailedError(snapshot.lastError ?? 'creating the snapshot on primary storage failed', snapshot.id);
        if (!snapshot.asyncBackup) throw new SnapshotBackupFailedError(snapshot);
      }
      return { snapshot: snapshotView(snapshot, refs, Date.now(), hostPaths(caller)), replay };
    },

    /**
     * Snapshots of several of a VM's volumes (default: all attached) at one instant, each its own snapshot with
     * its own backup. A running KVM VM's are taken by its QEMU on its host in one transaction
     * (services/snapshot-together.ts); a stopped VM's disks do not change, so they are taken one after the other.
     */
    async takeTogether(caller: Caller, vmId: string, input: { volumeIds?: string[]; asyncBackup: boolean; name?: string }): Promise<{ vmId: string; instant: 'live' | 'offline'; snapshots: SnapshotView[] }> {
      const vm = await findVm(pool, vmId, ownerScope(caller));
      if (!vm) throw new NotFoundError('VM', vmId);
      const attached = (await volumesOfVms(pool, [vm.id])).filter((v) => v.vmId === vm.id && v.state !== 'Destroyed').sort((a, b) => (a.deviceId ?? 0) - (b.deviceId ?? 0));
      const wanted = input.volumeIds ? [...new Set(input.volumeIds)] : attached.map((v) => v.id);
      const missing = wanted.filter((id) => !attached.some((v) => v.id === id));
      if (missing.length) throw new ValidationError(`volumes ${missing.join(', ')} are not attached to VM ${vm.id}`, { volumeIds: 'each must be a volume attached to the VM' });
      if (wanted.length === 0) throw new ValidationError(`VM ${vm.id} has no volumes to snapshot`, { volumeIds: 'at least one volume' });
      const volumes = wanted.map((id) => attached.find((v) => v.id === id)!);
      const name = (v: VolumeRecord) => (input.name ? `${input.name}-${v.name}` : undefined);
      const live = vm.hypervisor === 'KVM' && vm.state !== 'Stopped' && deps.vmSteps !== undefined && vm.hostId !== null;
      const log = logger.child({ vmId: vm.id, volumeIds: wanted });
      let outcomes: RequestOutcome[];
      if (!live) {
        outcomes = [];
        for (const v of volumes) outcomes.push(await request({ ownerId: ownerScope(caller), volumeId: v.id, asyncBackup: input.asyncBackup, ...(name(v) ? { name: name(v)! } : {}) }));
      } else {
        const host = (await findHost(pool, vm.hostId!))!;
        deps.vmSteps!.check(host);
        const allocated = [];
        for (const v of volumes) allocated.push(await allocate({ ownerId: ownerScope(caller), volumeId: v.id, asyncBackup: input.asyncBackup, ...(name(v) ? { name: name(v)! } : {}) }));
        const members = allocated.map((a, i) => ({ snapshotId: a.snapshot.id, volumeId: volumes[i]!.id, path: volumes[i]!.path, poolId: volumes[i]!.poolId, sizeBytes: volumes[i]!.sizeBytes }));
        // One instant on the host; a failure leaves every member in Error, none half made.
        await deps.vmSteps!.run(vm.id, host, { kind: 'snapshot-disks', members });
        log.info({ snapshotIds: members.map((m) => m.snapshotId) }, 'snapshots created at one instant; starting their workflows');
        outcomes = await Promise.all(allocated.map((a) => startAndAwait(a)));
      }
      return { vmId: vm.id, instant: live ? 'live' : 'offline', snapshots: outcomes.map((o) => snapshotView(o.snapshot, o.refs, Date.now(), hostPaths(caller))) };
    },

    /** Oldest first; `limit` and `after` (the previous page's last id) page through them. */
    async list(caller: Caller, filter: { volumeId?: string; vmId?: string; state?: SnapshotState; q?: string; after?: string; limit?: number } = {}): Promise<SnapshotView[]> {
      const snapshots = await listSnapshots(pool, ownerScope(caller), filter);
      const refs = await getStoreRefsOf(pool, snapshots.map((s) => s.id));
      return snapshots.map((s) => snapshotView(s, refs.get(s.id) ?? [], Date.now(), hostPaths(caller)));
    },

    /**
     * One page by offset with the total count (CloudStack's listSnapshots). `ownerId` narrows an admin's view to
     * one account; an ordinary caller always sees only their own.
     */
    async search(
      caller: Caller,
      q: { ownerId: string | null; ids?: string[]; volumeId?: string; name?: string; keyword?: string; limit: number; offset: number },
    ): Promise<{ count: number; items: SnapshotView[] }> {
      const { count, snapshots } = await searchSnapshots(pool, { ...q, ownerId: ownerScope(caller) ?? q.ownerId });
      const refs = await getStoreRefsOf(pool, snapshots.map((s) => s.id));
      return { count, items: snapshots.map((s) => snapshotView(s, refs.get(s.id) ?? [], Date.now(), hostPaths(caller))) };
    },

    async get(caller: Caller, id: string): Promise<SnapshotView> {
      const s = await getSnapshot(pool, id);
      const owner = ownerScope(caller);
      if (!s || (owner !== null && s.accountId !== owner)) throw new NotFoundError('snapshot', id);
      return view(caller, s);
    },

    /**
     * Deletes a BackedUp snapshot (BackedUp → Destroying → Destroyed: backup files, then the primary snapshot) or
     * an Error one (its leftovers). Crash-safe: Destroying (the intent) is committed under the row locks first;
     * the storage work then runs outside them, under the volume's image lock; Destroyed is committed after
     * (services/snapshot-delete.ts). A crash in between leaves Destroying, which start-up and storage GC finish.
     * If a file operation fails the snapshot goes to Error for storage GC.
     */
    async delete(caller: Caller, id: string): Promise<SnapshotView> {
      const intent = await withLockedSnapshot(caller, id, 'delete', async (tx, { snapshot, volume }) => {
        requireState(snapshot, ['BackedUp', 'Error'], 'delete');
        driverFor({ drivers }, volume.hypervisor);
        if (snapshot.status === 'BackedUp') {
          await transitionSnapshot(tx, snapshot.id, 'Destroying', { event: { type: 'SNAPSHOT.DELETE', description: `deleting snapshot ${snapshot.name}` } });
        }
        return { snapshot, from: snapshot.status === 'BackedUp' ? ('Destroying' as const) : ('Error' as const) };
      });
      const { snapshot, from } = intent;
      const log = logger.child({ snapshotId: snapshot.id, volumeId: snapshot.volumeId, operation: 'delete-snapshot' });
      try {
        const done = await finishSnapshotDelete({ pool, drivers, logger }, snapshot.id, { from });
        if (done.outcome === 'deferred') log.warn('snapshot delete left Destroying: its volume became busy; storage GC finishes it');
      } catch (err) {
        const reason = `deleting snapshot files failed: ${err instanceof Error ? err.message : String(err)}`;
        log.error({ err }, 'snapshot delete failed; moving it to Error for storage GC');
        if (from === 'Destroying') {
          await transitionSnapshot(pool, snapshot.id, 'Error', { set: { last_error: reason }, event: { type: 'SNAPSHOT.DELETE', level: 'ERROR', description: reason } }).catch(
            (e: unknown) => log.error({ err: e, cause: err }, 'could not move the snapshot to Error; it stays Destroying and storage GC finishes the delete'),
          );
        }
        throw err;
      }
      return view(caller, (await getSnapshot(pool, snapshot.id))!);
    },

    /**
     * Reverts the snapshot's volume to it. The volume's VM must be stopped, and no other snapshot of the volume
     * may be in flight: reverting rewrites the volume. From the primary snapshot (a metadata change) it runs in
     * one transaction; from the backup chain (the primary snapshot gone) it rewrites the whole volume, so, like
     * migrate and resize, in three steps with no row lock or pooled connection held during the copy: commit the
     * volume Reverting (with its `pending` record), copy, commit it Ready. A crash in between is settled by the
     * reconciler (services/volume-reconcile.ts: the copy is redone).
     */
    async revert(caller: Caller, id: string): Promise<VolumeView> {
      const token = randomUUID();
      type Begun =
        | { done: VolumeView }
        | {
            volume: VolumeRecord;
            snapshot: SnapshotRecord;
            pending: Extract<PendingVolumeOperation, { op: 'revert-from-backup' }>;
            chain: RestoreMember[];
          };
      const begun = await withLockedSnapshot<Begun>(caller, id, 'revert', async (tx, { snapshot, volume, vm }) => {
        // Reverting rewrites V: refused while any snapshot of V is in flight (the table's volume `revert` row).
        assertAllowed({ kind: 'volume', action: 'revert', volumeId: volume.id }, await inFlightSnapshots(tx, { volumeIds: [volume.id] }));
        requireState(snapshot, ['BackedUp'], 'revert');
        if (volume.removedAt || volume.state !== 'Ready') throw new ConflictError('INVALID_STATE', `volume ${volume.id} is ${volume.state}`, { volumeId: volume.id });
        if (vm && (vm.state === 'Running' || vm.state === 'Starting' || vm.state === 'Stopping')) {
          throw new ConflictError('INVALID_STATE', `VM ${vm.id} is ${vm.state}; stop it before reverting its volume`, { vmId: vm.id, state: vm.state });
        }
        const driver = driverFor({ drivers }, volume.hypervisor);
        const primary = (await getStoreRefs(tx, snapshot.id)).find((r) => r.role === 'Primary' && r.state === 'Ready');
        const onPrimary = primary !== undefined && (await driver.hasSnapshot(volume.path, snapshot.id));
        // Its primary copy gone (compensated, removed by an operator, its pool lost): the volume is rewritten
        // from the backup chain instead (docs/design.md §14).
        const backup = onPrimary || !driver.restoreVolumeFromBackup ? null : await imageRef(tx, snapshot);
        if (!onPrimary && !backup) {
          throw new ConflictError('PRIMARY_SNAPSHOT_MISSING', `snapshot ${snapshot.id} no longer exists on primary storage; create a volume from its backup instead`, { snapshotId: snapshot.id });
        }
        if (backup) {
          const pending = { op: 'revert-from-backup' as const, token, snapshotId: snapshot.id, storePath: backup.storePath, installPath: backup.ref.installPath, toBytes: snapshot.size };
          return { volume: await beginVolumeOperation(tx, volume.id, 'Reverting', pending), snapshot, pending, chain: backup.chain };
        }
        // A qcow2 snapshot records the disk size; reverting restores it.
        const reverted = await updateVolume(tx, volume.id, snapshot.size ? { size_bytes: snapshot.size } : {});
        await recordEvent(tx, {
          type: 'SNAPSHOT.REVERT',
          accountId: snapshot.accountId,
          resourceType: 'Snapshot',
          resourceId: snapshot.id,
          description: `volume ${volume.name} reverted to snapshot ${snapshot.name}`,
          details: { snapshotId: snapshot.id, volumeId: volume.id, fromBackup: false },
        });
        // Not undoable, so last: right before COMMIT; under the image lock, held on this transaction.
        await withImageLock(tx, volume.id, () => driver.revertSnapshot(volume.path, snapshot.id), { logger });
        return { done: volumeView(reverted) };
      });
      if ('done' in begun) return begun.done;
      const { volume, snapshot, pending, chain } = begun;
      const log = logger.child({ volumeId: volume.id, snapshotId: snapshot.id, operation: 'revert-from-backup', token });
      const driver = driverFor({ drivers }, volume.hypervisor);
      try {
        // No other writer touches the image meanwhile: snapshots, resize, migrate, deletes and reverts of the
        // volume are refused while it is Reverting (VOLUME_BUSY), and storage GC leaves busy volumes alone.
        await withVolumeHeartbeat(deps, volume.id, token, () =>
          driver.restoreVolumeFromBackup!(pending.storePath, pending.installPath, volume.path, chain),
        );
      } catch (err) {
        log.error({ err }, 'reverting a volume from a backup failed');
        await settleVolumeOperation({ ...deps, drivers }, volume, pending, err instanceof Error ? err.message : String(err), 'failed').catch((settleErr: unknown) =>
          log.error({ err: settleErr, cause: err }, 'settling the failed revert failed; the reconciler will'),
        );
        return restoreRefused(err, snapshot.id, chain);
      }
      const ready = await withTransaction(pool, async (tx) => {
        const v = await endVolumeOperation(tx, volume.id, token, { state: 'Ready', ...(pending.toBytes ? { size_bytes: pending.toBytes } : {}) });
        if (!v) return undefined;
        await recordEvent(tx, {
          type: 'SNAPSHOT.REVERT',
          accountId: snapshot.accountId,
          resourceType: 'Snapshot',
          resourceId: snapshot.id,
          description: `volume ${volume.name} reverted to snapshot ${snapshot.name} from its backup (the primary snapshot is gone)`,
          details: { snapshotId: snapshot.id, volumeId: volume.id, fromBackup: true },
        });
        return v;
      });
      if (!ready) {
        throw new ConflictError('VOLUME_OPERATION_ABANDONED', `reverting volume ${volume.id} took too long and was settled by the reconciler; check the volume`, { volumeId: volume.id, snapshotId: snapshot.id });
      }
      log.info('volume reverted from the backup');
      return volumeView(ready);
    },

    /**
     * Creates a new detached DATADISK volume from the snapshot's backup in the image store. Three steps, so
     * that no row lock or pooled connection is held during the copy: commit the new volume as Creating (the
     * snapshot cannot be deleted meanwhile: VOLUME_BUSY), copy, commit it Ready. A failure removes the partial
     * image and the volume (Destroyed); a crash in between is settled by the reconciler.
     */
    async createVolume(caller: Caller, id: string, input: { name?: string; poolId?: string }): Promise<VolumeView> {
      const token = randomUUID();
      const begun = await withLockedSnapshot(caller, id, 'create-volume', async (tx, { snapshot, volume: source }) => {
        requireState(snapshot, ['BackedUp'], 'creating a volume');
        driverFor({ drivers }, source.hypervisor);
        const { ref, storePath, chain } = await imageRef(tx, snapshot);
        const target = input.poolId ? await findStoragePool(tx, input.poolId) : await defaultStoragePool(tx, source.hypervisor);
        if (!target) throw new NotFoundError('storage pool', input.poolId!);
        if (target.hypervisor !== source.hypervisor) {
          throw new ConflictError('HYPERVISOR_MISMATCH', `storage pool ${target.name} is a ${target.hypervisor} pool, not ${source.hypervisor}`, { poolId: target.id });
        }
        const newId = randomUUID();
        const pending: Extract<PendingVolumeOperation, { op: 'create-from-snapshot' }> = { op: 'create-from-snapshot', token, snapshotId: snapshot.id, poolId: target.id, poolPath: target.path };
        const volume = await insertVolume(
          tx,
          {
            id: newId,
            accountId: snapshot.accountId,
            vmId: null,
            name: input.name ?? `${snapshot.name}-volume`,
            type: 'DATADISK',
            hypervisor: source.hypervisor,
            sizeBytes: snapshot.size ?? source.sizeBytes,
            poolId: target.id,
            // Where the KVM driver puts it (derived from ids); other drivers only say so when done.
            path: source.hypervisor === 'KVM' ? kvmVolumePath(target.path, newId) : '',
            format: source.hypervisor === 'KVM' ? 'qcow2' : 'vhd',
            deviceId: null,
          },
          pending,
        );
        return { volume, pending, snapshot, ref, storePath, target, chain };
      });
      const { volume, pending, snapshot, ref, storePath, target, chain } = begun;
      const log = logger.child({ volumeId: volume.id, snapshotId: snapshot.id, operation: 'create-from-snapshot', token });
      const driver = driverFor({ drivers }, volume.hypervisor);
      let created;
      try {
        // Only reads the backup and writes a file nobody else knows yet: no image lock needed.
        created = await withVolumeHeartbeat(deps, volume.id, token, () => driver.createVolumeFromBackup(storePath, ref.installPath, target.path, volume.id, chain));
      } catch (err) {
        log.error({ err }, 'creating a volume from a snapshot failed; removing it');
        await settleVolumeOperation({ ...deps, drivers }, volume, pending, err instanceof Error ? err.message : String(err), 'failed').catch((settleErr: unknown) =>
          log.error({ err: settleErr, cause: err }, 'removing the half-created volume failed; the reconciler will'),
        );
        return restoreRefused(err, snapshot.id, chain);
      }
      const ready = await withTransaction(pool, async (tx) => {
        const v = await endVolumeOperation(tx, volume.id, token, { state: 'Ready', path: created.path });
        if (!v) return undefined;
        await recordEvent(tx, {
          type: 'VOLUME.CREATE',
          accountId: snapshot.accountId,
          resourceType: 'Volume',
          resourceId: v.id,
          description: `volume ${v.name} created from snapshot ${snapshot.name}`,
          details: { volumeId: v.id, snapshotId: snapshot.id, poolId: target.id, path: created.path },
        });
        return v;
      });
      if (!ready) {
        // The reconciler judged this process dead and removed the volume meanwhile: the copy goes too.
        await driver.deleteVolume(created.path).catch((err: unknown) => log.error({ err }, 'removing the abandoned volume image failed'));
        throw new ConflictError('VOLUME_OPERATION_ABANDONED', `creating volume ${volume.id} took too long and was abandoned; try again`, { volumeId: volume.id, snapshotId: snapshot.id });
      }
      log.info({ path: created.path }, 'volume created from snapshot');
      return volumeView(ready);
    },
  };
}

export type SnapshotService = ReturnType<typeof createSnapshotService>;

/** Names of what a snapshot workflow is about, read when it is requested. */
interface WorkflowLabels {
  volumeName: string;
  vmName: string | null;
  accountName: string;
  sizeBytes: number;
}

function formatSize(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
}

/**
 * The workflow's static summary (one line in the Web UI's list) and details (markdown on its page). The
 * workflow's current details (workflows/snapshot-workflow.ts) add the live part: state, attempt n of N, next
 * retry, last error.
 */
export function workflowText(
  snapshot: Pick<SnapshotRecord, 'id' | 'name' | 'volumeId' | 'vmId' | 'accountId' | 'volumeType' | 'asyncBackup'>,
  input: Pick<SnapshotWorkflowInput, 'backup'>,
  labels: WorkflowLabels,
  consoleUrl?: string,
): { staticSummary: string; staticDetails: string } {
  const where = labels.vmName ? ` on VM ${labels.vmName}` : ' (detached volume)';
  return {
    staticSummary:
      `Snapshot ${snapshot.name} of ${labels.volumeName}${where} · ${labels.accountName} · ${formatSize(labels.sizeBytes)} · ` +
      `${snapshot.asyncBackup ? 'async' : 'sync'} backup`,
    staticDetails: [
      `**Snapshot** ${snapshot.name} (\`${snapshot.id}\`)`,
      `**Volume** ${labels.volumeName}, ${snapshot.volumeType}, ${formatSize(labels.sizeBytes)} virtual (\`${snapshot.volumeId}\`)`,
      `**VM** ${labels.vmName ? `${labels.vmName} (\`${snapshot.vmId}\`)` : '— (detached)'}`,
      `**Account** ${labels.accountName} (\`${snapshot.accountId}\`)`,
      `**Backup** ${snapshot.asyncBackup ? 'asynchronous' : 'synchronous'}, up to ${input.backup.maxAttempts} attempts, ${input.backup.retryIntervalSeconds} s apart`,
      ...(consoleUrl ? [`**Console** [open the snapshot](${consoleUrl}/#/snapshots/${snapshot.id})`] : []),
    ].join('\n\n'),
  };
}

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
      ...(s.backupIncremental !== null ? { incremental: s.backupIncremental } : {}),
      ...(s.snapshotDeltaMax !== null ? { deltaMax: s.snapshotDeltaMax } : {}),
    },
    backupTaskQueue,
  };
}
