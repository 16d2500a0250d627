import { randomUUID } from 'node:crypto';
import { findStoragePool } from '../db/catalog-queries.js';
import { recordEvent } from '../db/events.js';
import { withImageLock } from '../db/image-locks.js';
import { lockVolumeWithVm } from '../db/locks.js';
import { withTransaction, type PoolClient } from '../db/pool.js';
import { inFlightSnapshots } from '../db/snapshots.js';
import type { Hypervisor } from '../db/vms.js';
import {
  beginVolumeOperation,
  busyVolumes,
  destroyPrimaryRefsOfVolume,
  endVolumeOperation,
  findVolume,
  findVolumesByIds,
  isTransitionalVolumeState,
  insertVolume,
  listVolumes,
  markVolumeDestroyed,
  movePrimaryRefs,
  volumeOperationIsCurrent,
  type PendingVolumeOperation,
  type VolumeRecord,
  type VolumeState,
  type VolumeType,
} from '../db/volumes.js';
import { ConflictError, NotFoundError, ValidationError } from '../domain/errors.js';
import type { VolumeAction } from '../domain/policy.js';
import { ownerScope, type Caller } from './caller.js';
import { defaultStoragePool, driverFor, type ServiceDeps } from './deps.js';
import { assertAllowed, assertNotBusy } from './policy-guard.js';
import { volumePath as kvmVolumePath } from '../storage/paths.js';
import { withVolumeHeartbeat } from './volume-operations.js';
import { deleteVolumeImage, imageDeleteIntent } from './volume-image-delete.js';
import { settleVolumeOperation } from './volume-reconcile.js';
import { withStorageTransaction, type OnRollback } from './storage-transaction.js';
import { volumeView, type VolumeView } from './views.js';

export interface CreateVolumeInput {
  name: string;
  sizeBytes: number;
  hypervisor?: Hypervisor;
  /** Default: the hypervisor's first storage pool. */
  poolId?: string;
}

/** Volumes: standalone data disks and the operations on any volume, under the parallel-operation policy. */
export function createVolumeService(deps: ServiceDeps) {
  const { pool, logger } = deps;

  /**
   * Locks the volume (VM first), checks the policy for `action` and that it is Ready, then runs `fn` in the
   * same transaction.
   */
  function withLockedVolume<T>(
    caller: Caller,
    id: string,
    action: VolumeAction,
    fn: (tx: PoolClient, volume: VolumeRecord, onRollback: OnRollback) => Promise<T>,
  ): Promise<T> {
    return withStorageTransaction(pool, logger, async (tx, onRollback) => {
      const { volume, vm } = await lockVolumeWithVm(tx, id, ownerScope(caller));
      const op = { kind: 'volume', action, volumeId: volume.id } as const;
      // A running QEMU holds the image: no live resize or storage migration here (CloudStack's KVM needs the VM
      // stopped for a migration too). A VM that is records only (KVM_COMPUTE=none) has no QEMU.
      if ((action === 'resize' || action === 'migrate') && deps.vmSteps && vm?.hypervisor === 'KVM' && vm.state !== 'Stopped') {
        throw new ConflictError('INVALID_STATE', `volume ${volume.id} is attached to VM ${vm.name}, which is ${vm.state}; stop the VM before ${action === 'resize' ? 'resizing' : 'migrating'} the volume`, {
          volumeId: volume.id,
          vmId: vm.id,
          state: vm.state,
        });
      }
      assertAllowed(op, await inFlightSnapshots(tx, { volumeIds: [volume.id] }));
      // A volume whose storage work runs (Migrating, Resizing) answers 409 VOLUME_BUSY at once.
      if (isTransitionalVolumeState(volume.state)) assertNotBusy(op, await busyVolumes(tx, { volumeIds: [volume.id] }));
      if (volume.state !== 'Ready') throw new ConflictError('INVALID_STATE', `volume ${volume.id} is ${volume.state}, not Ready`, { volumeId: volume.id, state: volume.state });
      return fn(tx, volume, onRollback);
    });
  }

  /** The operation's own failure path: undo what storage shows; if even that fails, the reconciler will. */
  async function settle(volume: VolumeRecord, pending: Parameters<typeof settleVolumeOperation>[2], err: unknown): Promise<void> {
    const why = err instanceof Error ? err.message : String(err);
    await settleVolumeOperation(deps, volume, pending, why, 'failed').catch((settleErr: unknown) =>
      logger.error({ err: settleErr, cause: err, volumeId: volume.id }, 'undoing a failed volume operation failed; the reconciler will settle it'),
    );
  }

  const event = (tx: PoolClient, v: VolumeRecord, type: string, description: string, details: Record<string, unknown> = {}) =>
    recordEvent(tx, { type, accountId: v.accountId, resourceType: 'Volume', resourceId: v.id, description, details: { volumeId: v.id, ...details } });

  return {
    /** Creates a detached DATADISK volume: an empty image in the chosen (or first) storage pool. */
    async create(caller: Caller, input: CreateVolumeInput): Promise<VolumeView> {
      const hypervisor = input.hypervisor ?? 'KVM';
      const driver = driverFor(deps, hypervisor);
      const target = input.poolId ? await findStoragePool(pool, input.poolId) : await defaultStoragePool(pool, hypervisor);
      if (!target) throw new NotFoundError('storage pool', input.poolId!);
      if (target.hypervisor !== hypervisor) {
        throw new ConflictError('HYPERVISOR_MISMATCH', `storage pool ${target.name} is a ${target.hypervisor} pool, not ${hypervisor}`, { poolId: target.id });
      }
      const volume = await withStorageTransaction(pool, logger, async (tx, onRollback) => {
        const id = randomUUID();
        const created = await driver.createVolume(target.path, id, input.sizeBytes);
        onRollback(() => driver.deleteVolume(created.path));
        const v = await insertVolume(tx, {
          id,
          accountId: caller.accountId,
          vmId: null,
          name: input.name,
          type: 'DATADISK',
          hypervisor,
          sizeBytes: input.sizeBytes,
          poolId: target.id,
          path: created.path,
          format: created.format,
          deviceId: null,
        });
        await event(tx, v, 'VOLUME.CREATE', `volume ${v.name} (${v.sizeBytes} bytes) created in pool ${target.name}`, { poolId: target.id, path: v.path });
        return v;
      });
      return volumeView(volume);
    },

    /** Oldest first (a VM's by device); `limit` and `after` (the previous page's last id) page through them. */
    async list(caller: Caller, filter: { vmId?: string; type?: VolumeType; state?: VolumeState; after?: string; limit?: number } = {}): Promise<VolumeView[]> {
      return (await listVolumes(pool, ownerScope(caller), filter)).map(volumeView);
    },

    /** Volumes `ids` the caller may see (Destroyed ones left out), in no particular order. */
    async getMany(caller: Caller, ids: string[]): Promise<VolumeView[]> {
      return (await findVolumesByIds(pool, ids, ownerScope(caller))).map(volumeView);
    },

    async get(caller: Caller, id: string): Promise<VolumeView> {
      const v = await findVolume(pool, id, ownerScope(caller));
      if (!v) throw new NotFoundError('volume', id);
      return volumeView(v);
    },

    /**
     * Deletes a detached DATADISK: its image (and the primary snapshots in it) go; backups stay. Crash-safe: the
     * volume is committed Destroyed with the image deletion as its recorded intent, then the image is deleted
     * under its image lock (services/volume-image-delete.ts); a crash in between is finished at start-up and by
     * storage GC.
     */
    async delete(caller: Caller, id: string): Promise<VolumeView> {
      const { destroyed, intent } = await withLockedVolume(caller, id, 'delete', async (tx, volume) => {
        if (volume.vmId) throw new ConflictError('VOLUME_ATTACHED', `volume ${volume.id} is attached to VM ${volume.vmId}; detach it first`, { volumeId: volume.id, vmId: volume.vmId });
        driverFor(deps, volume.hypervisor);
        const intent = imageDeleteIntent(volume);
        const destroyed = await markVolumeDestroyed(tx, volume.id, intent);
        await destroyPrimaryRefsOfVolume(tx, volume.id);
        await event(tx, volume, 'VOLUME.DELETE', `volume ${volume.name} deleted`, { path: volume.path });
        return { destroyed, intent };
      });
      await deleteVolumeImage(deps, destroyed, intent).catch((err: unknown) =>
        logger.error({ err, volumeId: destroyed.id, path: intent.path }, 'deleting the image of a deleted volume failed; storage GC removes it'),
      );
      return volumeView(destroyed);
    },

    /**
     * Resizes a volume; shrinking loses data and needs `shrinkOk`. Three steps, so that no row lock or pooled
     * connection is held while qemu-img works: commit Resizing, resize under the image lock, commit the size.
     * A failure undoes the resize; a crash in between is settled by the reconciler.
     */
    async resize(caller: Caller, id: string, input: { sizeBytes: number; shrinkOk?: boolean }): Promise<VolumeView> {
      const token = randomUUID();
      type Begun = { unchanged: VolumeRecord } | { volume: VolumeRecord; pending: Extract<PendingVolumeOperation, { op: 'resize' }> };
      const begun = await withLockedVolume<Begun>(caller, id, 'resize', async (tx, volume) => {
        if (input.sizeBytes < volume.sizeBytes && !input.shrinkOk) {
          throw new ValidationError(`volume ${volume.id} has ${volume.sizeBytes} bytes; shrinking loses data, pass shrinkOk: true to do it`, {
            sizeBytes: `smaller than the current size ${volume.sizeBytes}; pass shrinkOk: true to shrink`,
          });
        }
        if (input.sizeBytes === volume.sizeBytes) return { unchanged: volume };
        driverFor(deps, volume.hypervisor);
        const pending = { op: 'resize' as const, token, fromBytes: volume.sizeBytes, toBytes: input.sizeBytes };
        return { volume: await beginVolumeOperation(tx, volume.id, 'Resizing', pending), pending };
      });
      if ('unchanged' in begun) return volumeView(begun.unchanged);
      const { volume, pending } = begun;
      const log = logger.child({ volumeId: volume.id, operation: 'resize', token });
      const driver = driverFor(deps, volume.hypervisor);
      try {
        await withVolumeHeartbeat(deps, volume.id, token, () => withImageLock(pool, volume.id, () => driver.resizeVolume(volume.path, input.sizeBytes), { logger: log }));
      } catch (err) {
        log.error({ err }, 'volume resize failed; undoing it');
        await settle(volume, pending, err);
        throw err;
      }
      const resized = await withTransaction(pool, async (tx) => {
        const v = await endVolumeOperation(tx, volume.id, token, { state: 'Ready', size_bytes: input.sizeBytes });
        if (v) await event(tx, v, 'VOLUME.RESIZE', `volume ${v.name} resized from ${pending.fromBytes} to ${input.sizeBytes} bytes`, { from: pending.fromBytes, to: input.sizeBytes });
        return v;
      });
      log.info({ from: pending.fromBytes, to: input.sizeBytes }, 'volume resized');
      // Not ours any more only if the reconciler judged this process dead and completed the resize itself.
      return volumeView(resized ?? (await findVolume(pool, volume.id, null))!);
    },

    /**
     * Moves a volume's image (with its primary snapshots) to another storage pool of the same hypervisor. The
     * copy runs with no row lock and no pooled connection held (the volume is Migrating meanwhile: VM actions
     * the policy allows answer at once); only publishing the copy takes the image lock. A failure undoes it;
     * a crash between the commits is settled by the reconciler.
     */
    async migrate(caller: Caller, id: string, input: { poolId: string }): Promise<VolumeView> {
      const token = randomUUID();
      const begun = await withLockedVolume(caller, id, 'migrate', async (tx, volume) => {
        const target = await findStoragePool(tx, input.poolId);
        if (!target) throw new NotFoundError('storage pool', input.poolId);
        if (target.hypervisor !== volume.hypervisor) {
          throw new ConflictError('HYPERVISOR_MISMATCH', `storage pool ${target.name} is a ${target.hypervisor} pool; volume ${volume.id} is ${volume.hypervisor}`, { poolId: target.id, volumeId: volume.id });
        }
        if (target.id === volume.poolId) throw new ConflictError('INVALID_STATE', `volume ${volume.id} is already in storage pool ${target.name}`, { volumeId: volume.id, poolId: target.id });
        driverFor(deps, volume.hypervisor);
        const pending = {
          op: 'migrate' as const,
          token,
          fromPoolId: volume.poolId,
          toPoolId: target.id,
          fromPath: volume.path,
          // Where the KVM driver puts it (derived from ids); other drivers only say so when done.
          toPath: volume.hypervisor === 'KVM' ? kvmVolumePath(target.path, volume.id) : '',
        };
        return { volume: await beginVolumeOperation(tx, volume.id, 'Migrating', pending), pending, target };
      });
      const { volume, pending, target } = begun;
      const log = logger.child({ volumeId: volume.id, operation: 'migrate', token, toPoolId: target.id });
      const driver = driverFor(deps, volume.hypervisor);
      let moved;
      try {
        moved = await withVolumeHeartbeat(deps, volume.id, token, () =>
          driver.migrateVolume(volume.path, target.path, volume.id, {
            lock: (fn) =>
              withImageLock(
                pool,
                volume.id,
                async () => {
                  // Publish only while the operation is still ours (not settled by a reconciler meanwhile).
                  if (!(await volumeOperationIsCurrent(pool, volume.id, token))) throw new ConflictError('VOLUME_OPERATION_ABANDONED', `the migration of volume ${volume.id} was settled by the reconciler meanwhile`, { volumeId: volume.id });
                  return fn();
                },
                { logger: log },
              ),
          }),
        );
      } catch (err) {
        log.error({ err }, 'volume migration failed; undoing it');
        await settle(volume, pending, err);
        throw err;
      }
      const updated = await withTransaction(pool, async (tx) => {
        const v = await endVolumeOperation(tx, volume.id, token, { state: 'Ready', pool_id: target.id, path: moved.path });
        if (!v) return undefined;
        // The internal snapshots moved with the image: their primary store refs follow.
        await movePrimaryRefs(tx, volume.id, target.id, moved.path);
        await event(tx, v, 'VOLUME.MIGRATE', `volume ${v.name} migrated to storage pool ${target.name}`, { from: pending.fromPoolId, to: target.id, path: moved.path });
        return v;
      });
      log.info({ path: moved.path }, 'volume migrated');
      return volumeView(updated ?? (await findVolume(pool, volume.id, null))!);
    },
  };
}

export type VolumeService = ReturnType<typeof createVolumeService>;
