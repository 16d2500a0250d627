import { randomUUID } from 'node:crypto';
import { findHost, findIso, findServiceOffering, isoImagePath, leastLoadedHost, listServiceOfferings } from '../db/catalog-queries.js';
import { recordEvent } from '../db/events.js';
import { lockVm, lockVmVolumes, lockVolumeWithVm } from '../db/locks.js';
import type { PoolClient } from '../db/pool.js';
import { inFlightSnapshots } from '../db/snapshots.js';
import { findVm, insertVm, listVms, updateVm, TRANSITIONAL_VM_STATES, type Hypervisor, type VmRecord, type VmState } from '../db/vms.js';
import { diskTarget } from '../compute/domain-xml.js';
import { consoleLogOf } from './vm-domain.js';
import { recordVmEvent } from './vm-events.js';
import type { VmHostRef } from './vm-step-dispatch.js';
import type { VmStep } from './vm-steps.js';
import { tailFile } from './file-tail.js';
import {
  destroyPrimaryRefsOfVolume,
  insertVolume,
  markVolumeDestroyed,
  isTransitionalVolumeState,
  updateVolume,
  volumesOfVms,
  type PendingImageDelete,
  type VolumeRecord,
} from '../db/volumes.js';
import { ConflictError, NotFoundError } from '../domain/errors.js';
import { decideBusy, vmActionDecisions, VM_ACTIONS, type BusyVolume, type Decision, type InFlightSnapshot, type VmAction } from '../domain/policy.js';
import type { StorageDriver } from '../storage/driver.js';
import { ownerScope, type Caller } from './caller.js';
import { defaultStoragePool, driverFor, type ServiceDeps } from './deps.js';
import { assertAllowed, assertNotBusy } from './policy-guard.js';
import { withStorageTransaction, type OnRollback } from './storage-transaction.js';
import { vmView, type VmView } from './views.js';
import { deleteVolumeImage, imageDeleteIntent } from './volume-image-delete.js';

export interface CreateVmInput {
  name: string;
  hypervisor: Hypervisor;
  /** An offering's id or name; default: the first offering. */
  serviceOffering?: string;
  rootDiskSizeBytes: number;
  dataDisks?: Array<{ name?: string; sizeBytes: number }>;
  /** Start it once created (CloudStack's startvm); default true. */
  start?: boolean;
}

/** A VM action with its parameters (docs/design.md §8). */
export type VmActionRequest =
  | { action: 'start' | 'reboot' | 'destroy' | 'reinstall' | 'detach-iso' }
  | { action: 'stop'; forced?: boolean }
  | { action: 'attach-iso'; isoId: string }
  | { action: 'attach-volume' | 'detach-volume'; volumeId: string }
  | { action: 'change-service-offering'; serviceOfferingId: string }
  | { action: 'migrate'; hostId: string };

export interface AllowedAction {
  action: VmAction;
  allowed: boolean;
  reason: string | null;
  snapshotId: string | null;
  volumeId: string | null;
}

const invalidState = (message: string, details: Record<string, unknown>) => new ConflictError('INVALID_STATE', message, details);

/** Virtual machines: creation with their disks on primary storage, actions under the parallel-operation policy. */
export function createVmService(deps: ServiceDeps) {
  const { pool, logger } = deps;

  async function view(vm: VmRecord): Promise<VmView> {
    return vmView(vm, await volumesOfVms(pool, [vm.id]));
  }

  /** Creates one disk image and its row; the image is removed again if the transaction fails. */
  async function createDisk(
    tx: PoolClient,
    onRollback: OnRollback,
    driver: StorageDriver,
    disk: { accountId: string; vmId: string; name: string; type: 'ROOT' | 'DATADISK'; hypervisor: Hypervisor; sizeBytes: number; deviceId: number },
  ): Promise<VolumeRecord> {
    const target = await defaultStoragePool(tx, disk.hypervisor);
    const id = randomUUID();
    const created = await driver.createVolume(target.path, id, disk.sizeBytes);
    onRollback(() => driver.deleteVolume(created.path));
    const volume = await insertVolume(tx, { id, ...disk, poolId: target.id, path: created.path, format: created.format });
    await recordEvent(tx, {
      type: 'VOLUME.CREATE',
      accountId: disk.accountId,
      resourceType: 'Volume',
      resourceId: id,
      description: `${disk.type} volume ${disk.name} (${disk.sizeBytes} bytes) created in pool ${target.name}`,
      details: { volumeId: id, vmId: disk.vmId, poolId: target.id, path: created.path },
    });
    return volume;
  }

  /** The host a KVM VM's actions reach (checked connected); null for a VM whose actions change only its row. */
  async function hostOf(vm: VmRecord): Promise<VmHostRef | null> {
    if (vm.hypervisor !== 'KVM' || !deps.vmSteps) return null;
    const host = vm.hostId ? await findHost(pool, vm.hostId) : undefined;
    if (!host) throw new ConflictError('NO_HOST', `VM ${vm.id} has no host`, { vmId: vm.id });
    deps.vmSteps.check(host);
    return host;
  }

  async function actOnce(caller: Caller, id: string, req: VmActionRequest, host: VmHostRef | null): Promise<VmView> {
    const imageDeletes: Array<{ volume: VolumeRecord; intent: PendingImageDelete }> = [];
    const steps: VmStep[] = [];
    let updated = await withStorageTransaction(pool, logger, async (tx, onRollback) => {
      imageDeletes.length = 0;
      steps.length = 0;
      const vm = await lockVm(tx, id, ownerScope(caller));
      return perform(tx, onRollback, caller, vm, req, imageDeletes, host !== null, steps);
    });
    // Committed: the images of the volumes it destroyed go now, each under its image lock.
    for (const { volume, intent } of imageDeletes) {
      await deleteVolumeImage(deps, volume, intent).catch((err: unknown) =>
        logger.error({ err, vmId: id, volumeId: volume.id, path: intent.path }, 'deleting the image of a destroyed volume failed; storage GC removes it'),
      );
    }
    // The second phase, on the VM's host: libvirt, then the result committed there.
    for (const step of steps) {
      await deps.vmSteps!.run(id, host!, step);
      updated = (await findVm(pool, id, null)) ?? updated;
    }
    logger.info({ vmId: id, action: req.action, accountId: caller.accountId, state: updated.state }, 'VM action done');
    return view(updated);
  }

  /** Locks the volume an attach/detach names (after the VM, per the lock order). */
  async function lockTargetVolume(tx: PoolClient, vm: VmRecord, volumeId: string, caller: Caller): Promise<VolumeRecord> {
    const { volume } = await lockVolumeWithVm(tx, volumeId, ownerScope(caller));
    if (volume.accountId !== vm.accountId) throw new NotFoundError('volume', volumeId);
    return volume;
  }

  /**
   * Runs the action in the caller's transaction. Images to delete (destroy, reinstall) are not touched here: the
   * volumes are committed Destroyed with the deletion as their recorded intent (`imageDeletes`), and the images go
   * after COMMIT under their image locks (act); a crash in between is finished at start-up and by storage GC.
   */
  async function perform(
    tx: PoolClient,
    onRollback: OnRollback,
    caller: Caller,
    vm: VmRecord,
    req: VmActionRequest,
    imageDeletes: Array<{ volume: VolumeRecord; intent: PendingImageDelete }>,
    managed: boolean,
    hypervisorSteps: VmStep[],
  ): Promise<VmRecord> {
    const target = req.action === 'attach-volume' || req.action === 'detach-volume' ? await lockTargetVolume(tx, vm, req.volumeId, caller) : undefined;
    const attached = await lockVmVolumes(tx, vm.id);
    const inFlight = await inFlightSnapshots(tx, { vmId: vm.id, volumeIds: target ? [target.id] : [] });
    const op = { kind: 'vm', action: req.action, vmId: vm.id, ...(target ? { volumeId: target.id } : {}) } as const;
    assertAllowed(op, inFlight);
    // A disk of this VM (or the one attached/detached) Migrating/Resizing: refused at once if it conflicts.
    assertNotBusy(op, toBusy([...attached, ...(target ? [target] : [])]));
    if (vm.state === 'Destroyed') throw invalidState(`VM ${vm.id} is Destroyed`, { vmId: vm.id, state: vm.state });
    if ((TRANSITIONAL_VM_STATES as readonly string[]).includes(vm.state)) {
      throw invalidState(`VM ${vm.id} is ${vm.state}; retry when it is ${vm.state === 'Starting' ? 'Running' : 'Stopped'}`, { vmId: vm.id, state: vm.state });
    }
    if (vm.pendingDisk) {
      throw invalidState(`VM ${vm.id} is changing its disks (${vm.pendingDisk.op} of volume ${vm.pendingDisk.volumeId}); retry when that is done`, {
        vmId: vm.id,
        state: vm.state,
        pendingDisk: vm.pendingDisk,
      });
    }
    const live = managed && vm.state === 'Running';
    const requireState = (state: VmState) => {
      if (vm.state !== state) throw invalidState(`VM ${vm.id} is ${vm.state}; ${req.action} needs it ${state}`, { vmId: vm.id, state: vm.state });
    };

    switch (req.action) {
      case 'start':
        requireState('Stopped');
        if (managed) {
          // Committed first; libvirt is asked after COMMIT and the result committed after that (act).
          hypervisorSteps.push({ kind: 'start' });
          return updateVm(tx, vm.id, { state: 'Starting', last_error: null });
        }
        await recordVmEvent(tx, vm, req.action, `VM ${vm.name} started`);
        return updateVm(tx, vm.id, { state: 'Running' });
      case 'stop':
        requireState('Running');
        if (managed) {
          hypervisorSteps.push({ kind: 'stop', forced: req.forced === true });
          return updateVm(tx, vm.id, { state: 'Stopping', last_error: null });
        }
        await recordVmEvent(tx, vm, req.action, `VM ${vm.name} stopped`);
        return updateVm(tx, vm.id, { state: 'Stopped' });
      case 'reboot':
        requireState('Running');
        if (managed) {
          hypervisorSteps.push({ kind: 'reboot' });
          return vm;
        }
        await recordVmEvent(tx, vm, req.action, `VM ${vm.name} rebooted`);
        return updateVm(tx, vm.id, {});
      case 'destroy': {
        const roots = attached.filter((v) => v.type === 'ROOT');
        for (const v of attached.filter((d) => d.type === 'DATADISK')) {
          await updateVolume(tx, v.id, { vm_id: null, device_id: null });
        }
        driverFor(deps, vm.hypervisor);
        for (const root of roots) {
          const intent = imageDeleteIntent(root);
          imageDeletes.push({ volume: await markVolumeDestroyed(tx, root.id, intent), intent });
          await destroyPrimaryRefsOfVolume(tx, root.id);
        }
        await recordVmEvent(tx, vm, req.action, `VM ${vm.name} destroyed; ROOT volume deleted, data disks detached`, {
          destroyedVolumeIds: roots.map((v) => v.id),
          detachedVolumeIds: attached.filter((d) => d.type === 'DATADISK').map((d) => d.id),
        });
        return updateVm(tx, vm.id, { state: 'Destroyed' });
      }
      case 'reinstall': {
        // As CloudStack's restoreVirtualMachine: a fresh ROOT volume (new id) replaces the old, which is destroyed.
        const driver = driverFor(deps, vm.hypervisor);
        const old = attached.find((v) => v.type === 'ROOT');
        if (!old) throw invalidState(`VM ${vm.id} has no ROOT volume`, { vmId: vm.id });
        const intent = imageDeleteIntent(old);
        imageDeletes.push({ volume: await markVolumeDestroyed(tx, old.id, intent), intent });
        await destroyPrimaryRefsOfVolume(tx, old.id);
        const fresh = await createDisk(tx, onRollback, driver, {
          accountId: vm.accountId,
          vmId: vm.id,
          name: old.name,
          type: 'ROOT',
          hypervisor: vm.hypervisor,
          sizeBytes: old.sizeBytes,
          deviceId: 0,
        });
        await recordVmEvent(tx, vm, req.action, `VM ${vm.name} reinstalled with a fresh ROOT volume`, { oldVolumeId: old.id, volumeId: fresh.id });
        return updateVm(tx, vm.id, {});
      }
      case 'attach-iso': {
        const iso = await findIso(tx, req.isoId);
        if (!iso) throw new NotFoundError('ISO', req.isoId);
        if (vm.isoId) throw new ConflictError('ISO_ALREADY_ATTACHED', `VM ${vm.id} already has ISO ${vm.isoId} attached; detach it first`, { vmId: vm.id, isoId: vm.isoId });
        // A KVM VM's CD-ROM needs the file: a catalog name without one would boot or run without it, silently.
        const isoPath = managed ? await isoImagePath(tx, iso.id) : null;
        if (managed && !isoPath) throw invalidState(`ISO ${iso.name} has no image file on this server; it cannot go into a VM's CD-ROM`, { isoId: iso.id, vmId: vm.id });
        await recordVmEvent(tx, vm, req.action, `ISO ${iso.name} attached to VM ${vm.name}`, { isoId: iso.id });
        // Into the running domain's CD-ROM after COMMIT; undone if libvirt refuses.
        if (live) hypervisorSteps.push({ kind: 'media', isoPath, previousIsoId: null, isoName: iso.name });
        return updateVm(tx, vm.id, { iso_id: iso.id });
      }
      case 'detach-iso':
        if (!vm.isoId) throw invalidState(`VM ${vm.id} has no ISO attached`, { vmId: vm.id });
        await recordVmEvent(tx, vm, req.action, `ISO detached from VM ${vm.name}`, { isoId: vm.isoId });
        if (live) hypervisorSteps.push({ kind: 'media', isoPath: null, previousIsoId: vm.isoId, isoName: vm.isoId });
        return updateVm(tx, vm.id, { iso_id: null });
      case 'attach-volume': {
        const volume = target!;
        if (volume.vmId) throw new ConflictError('VOLUME_ATTACHED', `volume ${volume.id} is attached to VM ${volume.vmId}; detach it first`, { volumeId: volume.id, vmId: volume.vmId });
        if (volume.state !== 'Ready') throw invalidState(`volume ${volume.id} is ${volume.state}, not Ready`, { volumeId: volume.id });
        if (volume.type !== 'DATADISK') throw invalidState(`only DATADISK volumes can be attached`, { volumeId: volume.id });
        if (volume.hypervisor !== vm.hypervisor) {
          throw new ConflictError('HYPERVISOR_MISMATCH', `volume ${volume.id} is a ${volume.hypervisor} volume; VM ${vm.id} runs on ${vm.hypervisor}`, { volumeId: volume.id, vmId: vm.id });
        }
        const deviceId = Math.max(0, ...attached.map((v) => v.deviceId ?? 0)) + 1;
        await updateVolume(tx, volume.id, { vm_id: vm.id, device_id: deviceId });
        await recordVmEvent(tx, vm, req.action, `volume ${volume.name} attached to VM ${vm.name}`, { volumeId: volume.id, deviceId });
        if (!live) return updateVm(tx, vm.id, {});
        // Hot-plugged after COMMIT; undone (detached again) if libvirt refuses. The pending mark keeps the power
        // sync off the VM's disks meanwhile, and lets it settle them if this process dies in between.
        const dev = diskTarget(deviceId);
        hypervisorSteps.push({ kind: 'attach', volume: { id: volume.id, name: volume.name, path: volume.path }, target: dev });
        return updateVm(tx, vm.id, { pending_disk: { op: 'attach', volumeId: volume.id, target: dev } });
      }
      case 'detach-volume': {
        const volume = target!;
        if (volume.vmId !== vm.id) throw new ConflictError('VOLUME_NOT_ATTACHED', `volume ${volume.id} is not attached to VM ${vm.id}`, { volumeId: volume.id, vmId: vm.id });
        if (volume.type === 'ROOT') throw invalidState(`the ROOT volume cannot be detached`, { volumeId: volume.id, vmId: vm.id });
        if (live) {
          // Still attached until the guest has let it go: the row changes when libvirt confirms (runHypervisorStep).
          const dev = diskTarget(volume.deviceId ?? 0);
          hypervisorSteps.push({ kind: 'detach', volume: { id: volume.id, name: volume.name, path: volume.path }, target: dev });
          return updateVm(tx, vm.id, { pending_disk: { op: 'detach', volumeId: volume.id, target: dev } });
        }
        await updateVolume(tx, volume.id, { vm_id: null, device_id: null });
        await recordVmEvent(tx, vm, req.action, `volume ${volume.name} detached from VM ${vm.name}`, { volumeId: volume.id });
        return updateVm(tx, vm.id, {});
      }
      case 'change-service-offering': {
        const offering = await findServiceOffering(tx, req.serviceOfferingId);
        if (!offering) throw new NotFoundError('service offering', req.serviceOfferingId);
        // No live scaling: CloudStack's reason for a running VM.
        if (live) throw invalidState(`Unable to upgrade virtual machine ${vm.name} in state Running; make sure the virtual machine is stopped`, { vmId: vm.id, state: vm.state });
        await recordVmEvent(tx, vm, req.action, `VM ${vm.name} changed to service offering ${offering.name}`, { serviceOfferingId: offering.id, previous: vm.serviceOfferingId });
        return updateVm(tx, vm.id, { service_offering_id: offering.id });
      }
      case 'migrate': {
        const host = await findHost(tx, req.hostId);
        if (!host) throw new NotFoundError('host', req.hostId);
        if (host.hypervisor !== vm.hypervisor) {
          throw new ConflictError('HYPERVISOR_MISMATCH', `host ${host.name} runs ${host.hypervisor}; VM ${vm.id} needs ${vm.hypervisor}`, { hostId: host.id, vmId: vm.id });
        }
        if (host.id === vm.hostId) throw invalidState(`VM ${vm.id} already runs on host ${host.name}`, { vmId: vm.id, hostId: host.id });
        // Live migration between libvirt hosts is not offered yet: a running VM is stopped first.
        if (live) throw invalidState(`VM ${vm.name} is Running; stop it before migrating it to host ${host.name} (live migration is not offered)`, { vmId: vm.id, state: vm.state });
        await recordVmEvent(tx, vm, req.action, `VM ${vm.name} migrated to host ${host.name}`, { hostId: host.id, previous: vm.hostId });
        return updateVm(tx, vm.id, { host_id: host.id });
      }
    }
  }

  return {
    /**
     * Creates a VM with its ROOT and data disks as images in the hypervisor's first storage pool, and starts it
     * (KVM: a libvirt domain on its host) unless `start` is false. XenServer VMs are rows, Running.
     */
    async create(caller: Caller, input: CreateVmInput): Promise<VmView> {
      const driver = driverFor(deps, input.hypervisor);
      const offering = input.serviceOffering
        ? await findServiceOffering(pool, input.serviceOffering)
        : (await listServiceOfferings(pool))[0];
      if (!offering) throw new NotFoundError('service offering', input.serviceOffering ?? '(default)');
      const host = await leastLoadedHost(pool, input.hypervisor);
      if (!host) throw new ConflictError('NO_HOST', `no ${input.hypervisor} host is available`, { hypervisor: input.hypervisor });
      // Asked before anything is created: a host that cannot start it refuses now, with nothing to undo.
      const start = input.start !== false;
      const managed = input.hypervisor === 'KVM' && deps.vmSteps !== undefined;
      if (managed && start) deps.vmSteps!.check(host);
      const vm = await withStorageTransaction(pool, logger, async (tx, onRollback) => {
        const id = randomUUID();
        await insertVm(tx, { id, accountId: caller.accountId, name: input.name, hypervisor: input.hypervisor, serviceOfferingId: offering.id, hostId: host.id, state: managed || !start ? 'Stopped' : 'Running' });
        const common = { accountId: caller.accountId, vmId: id, hypervisor: input.hypervisor };
        await createDisk(tx, onRollback, driver, { ...common, name: `${input.name}-ROOT`, type: 'ROOT', sizeBytes: input.rootDiskSizeBytes, deviceId: 0 });
        for (const [i, disk] of (input.dataDisks ?? []).entries()) {
          await createDisk(tx, onRollback, driver, { ...common, name: disk.name ?? `${input.name}-DATA-${i + 1}`, type: 'DATADISK', sizeBytes: disk.sizeBytes, deviceId: i + 1 });
        }
        await recordEvent(tx, {
          type: 'VM.CREATE',
          accountId: caller.accountId,
          resourceType: 'VirtualMachine',
          resourceId: id,
          description: `VM ${input.name} created on host ${host.name} with offering ${offering.name}`,
          details: { vmId: id, hostId: host.id, serviceOfferingId: offering.id },
        });
        return id;
      });
      // As CloudStack's deployVirtualMachine with startvm: the VM exists once committed; a start that fails leaves
      // it Stopped with the hypervisor's reason (HYPERVISOR_ERROR names it), to start again or destroy.
      if (managed && start) return actOnce(caller, vm, { action: 'start' }, host);
      return view((await findVm(pool, vm, null))!);
    },

    /** Oldest first; `limit` and `after` (the previous page's last id) page through them. */
    async list(caller: Caller, filter: { state?: VmState; after?: string; limit?: number } = {}): Promise<VmView[]> {
      const vms = await listVms(pool, ownerScope(caller), filter);
      const volumes = await volumesOfVms(pool, vms.map((v) => v.id));
      return vms.map((vm) => vmView(vm, volumes));
    },

    async get(caller: Caller, id: string): Promise<VmView> {
      const vm = await findVm(pool, id, ownerScope(caller));
      if (!vm) throw new NotFoundError('VM', id);
      return view(vm);
    },

    /**
     * Runs a VM action: locks the VM and the volumes involved, checks the policy and commits what it decides, in
     * one transaction. An action that reaches the hypervisor (KVM: libvirt) is two-phase: the transitional state
     * (Starting, Stopping) or the new attachment is committed first, libvirt is called after COMMIT and outside
     * every row lock, and its result is committed after; a process that dies in between leaves the transitional
     * state, which vm-power-sync settles from libvirt's truth. Destroy and reinstall stop a running VM first.
     */
    async act(caller: Caller, id: string, req: VmActionRequest): Promise<VmView> {
      const before = await findVm(pool, id, ownerScope(caller));
      if (!before) throw new NotFoundError('VM', id);
      const host = await hostOf(before);
      const wasRunning = before.state === 'Running';
      if (host && wasRunning && (req.action === 'destroy' || req.action === 'reinstall')) {
        await actOnce(caller, id, { action: 'stop', forced: true }, host);
      }
      const done = await actOnce(caller, id, req, host);
      if (host && wasRunning && req.action === 'reinstall') {
        // As CloudStack's restoreVirtualMachine: a VM that ran runs again, on its fresh ROOT volume.
        return actOnce(caller, id, { action: 'start' }, host);
      }
      return done;
    },
    /** The last `lines` lines of the VM's serial console log (written by QEMU while its domain runs). */
    async consoleTail(caller: Caller, id: string, lines: number): Promise<{ vmId: string; lines: string[]; truncated: boolean; updatedAt: string | null }> {
      const vm = await findVm(pool, id, ownerScope(caller));
      if (!vm) throw new NotFoundError('VM', id);
      if (!deps.consoleDir) return { vmId: vm.id, lines: [], truncated: false, updatedAt: null };
      return { vmId: vm.id, ...(await tailFile(consoleLogOf(deps.consoleDir, vm.id), lines)) };
    },
    /** Which VM actions the parallel-operation policy allows now, with reasons (the same table the actions use). */
    async allowedActions(caller: Caller, id: string): Promise<{ vmId: string; inFlightSnapshots: InFlightSnapshot[]; actions: AllowedAction[] }> {
      const vm = await findVm(pool, id, ownerScope(caller));
      if (!vm) throw new NotFoundError('VM', id);
      const inFlight = await inFlightSnapshots(pool, { vmId: vm.id });
      const decisions = vmActionDecisions(vm.id, inFlight);
      const busy = toBusy(await volumesOfVms(pool, [vm.id]));
      return {
        vmId: vm.id,
        inFlightSnapshots: inFlight,
        actions: VM_ACTIONS.map((action) => {
          const d = decisions[action];
          if (!d.allowed) return toAllowedAction(action, d);
          // detach-volume: answered for the busy disks (the restrictive case), as for backing-up ones.
          for (const volumeId of action === 'detach-volume' ? [undefined, ...busy.map((b) => b.volumeId)] : [undefined]) {
            const b = decideBusy({ kind: 'vm', action, vmId: vm.id, ...(volumeId ? { volumeId } : {}) }, busy);
            if (!b.allowed) return { action, allowed: false, reason: b.reason, snapshotId: null, volumeId: b.volumeId };
          }
          return toAllowedAction(action, d);
        }),
      };
    },
  };
}

/** The busy (Migrating, Resizing, Creating) volumes among `volumes`. */
function toBusy(volumes: VolumeRecord[]): BusyVolume[] {
  return volumes
    .filter((v) => isTransitionalVolumeState(v.state))
    .map((v) => ({ volumeId: v.id, state: v.state, volumeType: v.type, vmId: v.vmId }));
}

function toAllowedAction(action: VmAction, d: Decision): AllowedAction {
  return d.allowed
    ? { action, allowed: true, reason: null, snapshotId: null, volumeId: null }
    : { action, allowed: false, reason: d.reason, snapshotId: d.snapshotId, volumeId: d.volumeId };
}

export type VmService = ReturnType<typeof createVmService>;
