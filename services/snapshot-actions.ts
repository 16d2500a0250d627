import { randomUUID } from 'node:crypto';
import { defaultImageStore } from '../db/catalog.js';
import { findImageStore, findStoragePool } from '../db/catalog-queries.js';
import { recordEvent } from '../db/events.js';
import { withImageLock } from '../db/image-locks.js';
import { withTransaction, type PoolClient } from '../db/pool.js';
import { getSnapshot, getStoreRefs, toSnapshotRecord, type SnapshotRecord, type StoreRefRecord } from '../db/snapshots.js';
import { endVolumeOperation, findVolume, insertVolume, updateVolume, type PendingVolumeOperation, type VolumeRecord } from '../db/volumes.js';
import { volumePath as kvmVolumePath } from '../storage/paths.js';
import { withVolumeHeartbeat } from './volume-operations.js';
import { settleVolumeOperation } from './volume-reconcile.js';
import type { VmRecord } from '../db/vms.js';
import { ConflictError, NotFoundError, SnapshotCreationFailedError } from '../domain/errors.js';
import type { SnapshotAction } from '../domain/policy.js';
import type { SnapshotState } from '../domain/snapshot-states.js';
import type { SnapshotService } from './snapshots.js';
import { ownerScope, type Caller } from './caller.js';
import { defaultStoragePool, driverFor, type ServiceDeps } from './deps.js';
import { lockSnapshotWithVolume } from './locks.js';
import { assertAllowed, assertNotBusy, busyVolumes, inFlightSnapshots } from './policy-guard.js';
import { transitionLockedSnapshot } from './snapshot-transitions.js';
import { withStorageTransaction, type OnRollback } from './storage-transaction.js';
import { snapshotView, volumeView, type SnapshotView, type VolumeView } from './views.js';

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

/** Snapshot requests and the operations on existing snapshots (delete, revert, new volume), under the policy. */
export function createSnapshotActions(deps: ServiceDeps & { snapshots: SnapshotService }) {
  const { pool, logger } = deps;

  async function view(s: SnapshotRecord): Promise<SnapshotView> {
    return snapshotView(s, await getStoreRefs(pool, s.id));
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

  async function imageRef(tx: PoolClient, s: SnapshotRecord): Promise<{ ref: StoreRefRecord; storePath: string }> {
    const ref = (await getStoreRefs(tx, s.id)).find((r) => r.role === 'Image' && r.state === 'Ready');
    const store = ref && (await findImageStore(tx, ref.storeId));
    if (!ref || !store) throw new ConflictError('BACKUP_MISSING', `snapshot ${s.id} has no usable backup in an image store`, { snapshotId: s.id });
    return { ref, storePath: store.path };
  }

  return {
    /**
     * Takes a snapshot of a volume through the snapshot service (Update-with-Start). Resolves at the milestone;
     * a failed creation, or a failed synchronous backup, is an error carrying the snapshot's id.
     */
    async take(caller: Caller, volumeId: string, input: TakeSnapshotInput): Promise<TakenSnapshot> {
      const volume = await findVolume(pool, volumeId, ownerScope(caller));
      if (!volume || volume.removedAt) throw new NotFoundError('volume', volumeId);
      driverFor(deps, volume.hypervisor);
      const { snapshot, replay } = await deps.snapshots.requestSnapshot({
        // The snapshot belongs to the volume's account, also when an admin takes it.
        accountId: volume.accountId,
        volumeId: volume.id,
        asyncBackup: input.asyncBackup,
        ...(input.name !== undefined ? { name: input.name } : {}),
        ...(input.idempotencyKey !== undefined ? { idempotencyKey: input.idempotencyKey } : {}),
      });
      const refs = await getStoreRefs(pool, snapshot.id);
      if (snapshot.status === 'Error') {
        // A replayed request whose snapshot never reached primary storage answers as the first one did.
        if (!refs.some((r) => r.role === 'Primary')) throw new SnapshotCreationFailedError(snapshot.lastError ?? 'creating the snapshot on primary storage failed', snapshot.id);
        if (!snapshot.asyncBackup) throw new SnapshotBackupFailedError(snapshot);
      }
      return { snapshot: snapshotView(snapshot, refs), replay };
    },

    async list(caller: Caller, filter: { volumeId?: string; state?: SnapshotState } = {}): Promise<SnapshotView[]> {
      const { rows } = await pool.query(
        `SELECT * FROM snapshots
          WHERE ($1::uuid IS NULL OR account_id = $1) AND ($2::uuid IS NULL OR volume_id = $2)
            AND (CASE WHEN $3::text IS NULL THEN status <> 'Destroyed' ELSE status = $3 END)
          ORDER BY created, id`,
        [ownerScope(caller), filter.volumeId ?? null, filter.state ?? null],
      );
      const snapshots = rows.map(toSnapshotRecord);
      const refs = snapshots.length
        ? (await pool.query('SELECT * FROM snapshot_store_ref WHERE snapshot_id = ANY($1::uuid[]) ORDER BY store_role DESC', [snapshots.map((s) => s.id)])).rows
        : [];
      return snapshots.map((s) =>
        snapshotView(
          s,
          refs
            .filter((r) => r.snapshot_id === s.id)
            .map((r) => ({ snapshotId: r.snapshot_id, role: r.store_role, storeId: r.store_id, installPath: r.install_path, state: r.state, sizeBytes: r.size, checksum: r.checksum })),
        ),
      );
    },

    async get(caller: Caller, id: string): Promise<SnapshotView> {
      const s = await getSnapshot(pool, id);
      const owner = ownerScope(caller);
      if (!s || (owner !== null && s.accountId !== owner)) throw new NotFoundError('snapshot', id);
      return view(s);
    },

    /**
     * Deletes a BackedUp snapshot (BackedUp → Destroying → Destroyed: backup files, then the primary snapshot) or
     * an Error one (its leftovers). If a file operation fails the snapshot goes to Error for storage GC.
     */
    async delete(caller: Caller, id: string): Promise<SnapshotView> {
      const outcome = await withLockedSnapshot(caller, id, 'delete', async (tx, { snapshot, volume }) => {
        requireState(snapshot, ['BackedUp', 'Error'], 'delete');
        const driver = driverFor(deps, volume.hypervisor);
        let current = snapshot;
        if (current.status === 'BackedUp') {
          current = await transitionLockedSnapshot(tx, current, 'Destroying', { type: 'SNAPSHOT.DELETE', description: `deleting snapshot ${snapshot.name}` });
        }
        const target = { accountId: snapshot.accountId, volumeId: snapshot.volumeId, snapshotId: snapshot.id };
        try {
          const refs = await getStoreRefs(tx, snapshot.id);
          const imageStoreIds = new Set(refs.filter((r) => r.role === 'Image').map((r) => r.storeId));
          const stores = imageStoreIds.size
            ? await Promise.all([...imageStoreIds].map((sid) => findImageStore(tx, sid)))
            : [await defaultImageStore(tx)];
          for (const store of stores) {
            // A store directory that cannot exist (a path under a file) holds no files of this snapshot.
            if (store) await driver.deleteBackupFiles(store.path, target).catch(ignoreCode('ENOTDIR'));
          }
          // Skipped when the primary snapshot is already gone (compensated, or its volume deleted or replaced).
          const primaryLive = refs.some((r) => r.role === 'Primary' && r.state !== 'Destroyed');
          // Under the image lock (on this transaction): qemu-img in another process must not clash with it.
          if (primaryLive && !volume.removedAt) await withImageLock(tx, volume.id, () => driver.deleteSnapshot(volume.path, snapshot.id), { logger });
        } catch (err) {
          const reason = `deleting snapshot files failed: ${err instanceof Error ? err.message : String(err)}`;
          logger.error({ err, snapshotId: snapshot.id }, 'snapshot delete failed; moving it to Error for storage GC');
          if (current.status === 'Destroying') {
            await transitionLockedSnapshot(tx, current, 'Error', { type: 'SNAPSHOT.DELETE', level: 'ERROR', description: reason }, { last_error: reason });
          }
          return { failed: err };
        }
        await tx.query(`UPDATE snapshot_store_ref SET state = 'Destroyed', last_updated = now() WHERE snapshot_id = $1`, [snapshot.id]);
        const done = await transitionLockedSnapshot(tx, current, 'Destroyed', { type: 'SNAPSHOT.DELETE', description: `snapshot ${snapshot.name} deleted` }, { removed: new Date() });
        return { done };
      });
      if ('failed' in outcome) throw outcome.failed;
      return view(outcome.done);
    },

    /**
     * Reverts the snapshot's volume to it (the primary snapshot must still exist). The volume's VM must be
     * stopped, and no other snapshot of the volume may be in flight: reverting rewrites the volume.
     */
    revert(caller: Caller, id: string): Promise<VolumeView> {
      return withLockedSnapshot(caller, id, 'revert', async (tx, { snapshot, volume, vm }) => {
        // Reverting rewrites V: refused while any snapshot of V is in flight (the table's volume `revert` row).
        assertAllowed({ kind: 'volume', action: 'revert', volumeId: volume.id }, await inFlightSnapshots(tx, { volumeIds: [volume.id] }));
        requireState(snapshot, ['BackedUp'], 'revert');
        if (volume.removedAt || volume.state !== 'Ready') throw new ConflictError('INVALID_STATE', `volume ${volume.id} is ${volume.state}`, { volumeId: volume.id });
        if (vm && vm.state === 'Running') throw new ConflictError('INVALID_STATE', `VM ${vm.id} is Running; stop it before reverting its volume`, { vmId: vm.id, state: vm.state });
        const driver = driverFor(deps, volume.hypervisor);
        const primary = (await getStoreRefs(tx, snapshot.id)).find((r) => r.role === 'Primary' && r.state === 'Ready');
        if (!primary || !(await driver.hasSnapshot(volume.path, snapshot.id))) {
          throw new ConflictError('PRIMARY_SNAPSHOT_MISSING', `snapshot ${snapshot.id} no longer exists on primary storage; create a volume from its backup instead`, { snapshotId: snapshot.id });
        }
        // A qcow2 snapshot records the disk size; reverting restores it.
        const reverted = await updateVolume(tx, volume.id, snapshot.size ? { size_bytes: snapshot.size } : {});
        await recordEvent(tx, {
          type: 'SNAPSHOT.REVERT',
          accountId: snapshot.accountId,
          resourceType: 'Snapshot',
          resourceId: snapshot.id,
          description: `volume ${volume.name} reverted to snapshot ${snapshot.name}`,
          details: { snapshotId: snapshot.id, volumeId: volume.id },
        });
        // Not undoable, so last: right before COMMIT; under the image lock, held on this transaction.
        await withImageLock(tx, volume.id, () => driver.revertSnapshot(volume.path, snapshot.id), { logger });
        return volumeView(reverted);
      });
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
        driverFor(deps, source.hypervisor);
        const { ref, storePath } = await imageRef(tx, snapshot);
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
        return { volume, pending, snapshot, ref, storePath, target };
      });
      const { volume, pending, snapshot, ref, storePath, target } = begun;
      const log = logger.child({ volumeId: volume.id, snapshotId: snapshot.id, operation: 'create-from-snapshot', token });
      const driver = driverFor(deps, volume.hypervisor);
      let created;
      try {
        // Only reads the backup and writes a file nobody else knows yet: no image lock needed.
        created = await withVolumeHeartbeat(deps, volume.id, token, () => driver.createVolumeFromBackup(storePath, ref.installPath, target.path, volume.id));
      } catch (err) {
        log.error({ err }, 'creating a volume from a snapshot failed; removing it');
        await settleVolumeOperation(deps, volume, pending, err instanceof Error ? err.message : String(err), 'failed').catch((settleErr: unknown) =>
          log.error({ err: settleErr, cause: err }, 'removing the half-created volume failed; the reconciler will'),
        );
        throw err;
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

export type SnapshotActions = ReturnType<typeof createSnapshotActions>;

/** Swallows filesystem errors with `code`, rethrows the rest. */
function ignoreCode(code: string) {
  return (err: unknown): undefined => {
    if ((err as NodeJS.ErrnoException | undefined)?.code === code) return undefined;
    let cause: unknown = err;
    while (cause instanceof Error && cause.cause) cause = cause.cause;
    if ((cause as NodeJS.ErrnoException | undefined)?.code === code) return undefined;
    throw err;
  };
}
