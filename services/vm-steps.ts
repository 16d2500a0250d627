/**
 * The second phase of a VM action (docs/design.md §15): the hypervisor call and the commit of its result. It runs
 * on the VM's host (the host worker's `runVmStep` activity, services/vm-step-dispatch.ts), after the first phase
 * (the transitional state, a pending hot-plug) was committed by services/vms.ts. Each step reads the row first and
 * acts only if the row still shows its first phase: a step settled meanwhile (by the power sync, or its
 * abandonment when no host took it) is not run again.
 */
import type { Logger } from 'pino';
import { findHost } from '../db/catalog-queries.js';
import { lockVm } from '../db/locks.js';
import { withTransaction, type Pool, type PoolClient } from '../db/pool.js';
import { findVm, updateVm, type VmRecord, type VmState } from '../db/vms.js';
import { updateVolume } from '../db/volumes.js';
import type { ComputeDriver } from '../compute/driver.js';
import type { ComputeRegistry } from '../compute/registry.js';
import type { GuestBoot } from '../compute/test-guest.js';
import { ConflictError, publicErrorMessage } from '../domain/errors.js';
import type { VmAction } from '../domain/policy.js';
import type { StorageDriver } from '../storage/driver.js';
import { abandonTogether, snapshotTogether, type TogetherMember } from './snapshot-together.js';
import { domainSpecOf } from './vm-domain.js';
import { recordVmEvent } from './vm-events.js';

/** The volume a hot-plug step plugs or unplugs. */
export interface StepVolume {
  id: string;
  name: string;
  path: string;
}

/** What an action asks of the hypervisor once its first phase is committed (plain data: a workflow's input). */
export type VmStep =
  | { kind: 'start' }
  | { kind: 'stop'; forced: boolean }
  | { kind: 'reboot' }
  | { kind: 'attach' | 'detach'; volume: StepVolume; target: string }
  | { kind: 'media'; isoPath: string | null; previousIsoId: string | null; isoName: string };

/** What a host worker runs for the API: a VM action's step, or snapshots of several disks at one instant. */
export type HostStep = VmStep | { kind: 'snapshot-disks'; members: TogetherMember[] };

export interface VmStepDeps {
  pool: Pool;
  logger: Logger;
  compute: ComputeRegistry;
  /** The KVM storage driver, for a group whose VM stopped meanwhile (services/snapshot-together.ts). */
  kvm: StorageDriver;
  /** Where the VMs' serial consoles are written on this host. */
  consoleDir: string;
  vmBoot?: GuestBoot | undefined;
}

const ACTION_OF: Record<VmStep['kind'], (s: VmStep) => VmAction> = {
  start: () => 'start',
  stop: () => 'stop',
  reboot: () => 'reboot',
  attach: () => 'attach-volume',
  detach: () => 'detach-volume',
  media: (s) => (s.kind === 'media' && s.isoPath ? 'attach-iso' : 'detach-iso'),
};

/** Whether the row still shows the step's first phase (and so the step is still to run). */
function stillPending(vm: VmRecord, step: VmStep): boolean {
  switch (step.kind) {
    case 'start':
      return vm.state === 'Starting';
    case 'stop':
      return vm.state === 'Stopping';
    case 'attach':
    case 'detach':
      return vm.pendingDisk?.volumeId === step.volume.id && vm.pendingDisk.op === step.kind;
    case 'reboot':
    case 'media':
      return vm.state === 'Running';
  }
}

/** Commits a step's outcome under the VM's lock, if the row still shows the step's first phase. */
async function settle(pool: Pool, vmId: string, step: VmStep, fn: (tx: PoolClient, vm: VmRecord) => Promise<VmRecord>): Promise<VmRecord> {
  return withTransaction(pool, async (tx) => {
    const vm = await lockVm(tx, vmId, null);
    // Settled meanwhile (the power sync, after this step was presumed dead): its answer stands.
    if (!stillPending(vm, step)) return vm;
    return fn(tx, vm);
  });
}

/** Undoes the first phase of a step that failed or never ran: the row as before the action, with the reason. */
async function undo(pool: Pool, vm: VmRecord, step: VmStep, text: string, after: VmState): Promise<VmRecord> {
  return settle(pool, vm.id, step, async (tx, row) => {
    if (step.kind === 'attach') await updateVolume(tx, step.volume.id, { vm_id: null, device_id: null });
    if (step.kind === 'media') await updateVm(tx, row.id, { iso_id: step.previousIsoId });
    await recordVmEvent(tx, row, ACTION_OF[step.kind](step), `${describe(vm, step)} failed: ${text}`, { error: text }, 'ERROR');
    const hotplug = step.kind === 'attach' || step.kind === 'detach';
    return updateVm(tx, row.id, { state: after, last_error: text, ...(hotplug ? { pending_disk: null } : {}) });
  });
}

const stateBefore = (vm: VmRecord, step: VmStep): VmState => (step.kind === 'start' ? 'Stopped' : step.kind === 'stop' ? 'Running' : vm.state);

/**
 * A step no host took (its queue had no poller in time, so nothing ran): its first phase is undone with the
 * reason. Runs anywhere (the main task queue): it needs only the database.
 */
export async function abandonVmStep(pool: Pool, vmId: string, step: HostStep, reason: string): Promise<void> {
  if (step.kind === 'snapshot-disks') return abandonTogether(pool, step.members, reason);
  const vm = await findVm(pool, vmId, null);
  if (vm && stillPending(vm, step)) await undo(pool, vm, step, reason, stateBefore(vm, step));
}

export function createVmStepRunner(deps: VmStepDeps) {
  const { pool, logger } = deps;

  /** The hypervisor's text for the user: paths shortened (admins read them whole in the log and events). */
  const hypervisorText = (err: unknown) => publicErrorMessage(err instanceof Error ? err.message : String(err));

  async function runStep(vm: VmRecord, step: VmStep, compute: ComputeDriver): Promise<VmRecord> {
    const log = logger.child({ vmId: vm.id, host: compute.uri, step: step.kind });
    const failed = async (err: unknown, state: VmState): Promise<never> => {
      const text = err instanceof Error ? err.message : String(err);
      log.error({ err }, `${describe(vm, step)} failed`);
      const after = await undo(pool, vm, step, text, state);
      throw new ConflictError('HYPERVISOR_ERROR', `${describe(vm, step)} failed: ${hypervisorText(err)}`, { vmId: vm.id, state: after.state });
    };
    switch (step.kind) {
      case 'start': {
        const host = vm.hostId ? await findHost(pool, vm.hostId) : undefined;
        const accelerator = host ? deps.compute.acceleratorFor(host) : 'qemu';
        const started = await compute
          .start(await domainSpecOf(pool, vm, deps.consoleDir, accelerator, deps.vmBoot))
          .catch((err: unknown) => failed(err, 'Stopped'));
        return settle(pool, vm.id, step, async (tx, row) => {
          const how = accelerator === 'kvm' ? 'KVM' : 'TCG';
          await recordVmEvent(tx, row, 'start', `VM ${vm.name} started on host ${host?.name ?? compute.uri} (${how})`, { result: started, accelerator });
          return updateVm(tx, row.id, { state: 'Running', accelerator });
        });
      }
      case 'stop': {
        const stopped = await compute.stop(vm.id, { forced: step.forced }).catch(async (err: unknown) => {
          // Whatever libvirt said, its truth decides what the row says now.
          const power = await compute.powerState(vm.id).catch(() => 'other' as const);
          return failed(err, power === 'absent' ? 'Stopped' : 'Running');
        });
        const how = stopped === 'shut-down' ? 'shut down by its guest' : stopped === 'powered-off' ? 'powered off' : 'already stopped on its host';
        return settle(pool, vm.id, step, async (tx, row) => {
          await recordVmEvent(tx, row, 'stop', `VM ${vm.name} stopped (${how})`, { result: stopped, forced: step.forced });
          return updateVm(tx, row.id, { state: 'Stopped' });
        });
      }
      case 'reboot':
        await compute.reboot(vm.id).catch((err: unknown) => failed(err, vm.state));
        return settle(pool, vm.id, step, async (tx, row) => {
          await recordVmEvent(tx, row, 'reboot', `VM ${vm.name} rebooted`);
          return updateVm(tx, row.id, {});
        });
      case 'attach':
        await compute.attachDisk(vm.id, { path: step.volume.path, target: step.target, volumeId: step.volume.id }).catch((err: unknown) => failed(err, vm.state));
        return settle(pool, vm.id, step, async (tx, row) => updateVm(tx, row.id, { pending_disk: null }));
      case 'media':
        await compute.changeMedia(vm.id, step.isoPath).catch((err: unknown) => failed(err, vm.state));
        return vm;
      case 'detach':
        await compute.detachDisk(vm.id, step.target).catch((err: unknown) => failed(err, vm.state));
        return settle(pool, vm.id, step, async (tx, row) => {
          await updateVolume(tx, step.volume.id, { vm_id: null, device_id: null });
          await recordVmEvent(tx, row, 'detach-volume', `volume ${step.volume.name} detached from VM ${vm.name} (hot-unplugged)`, { volumeId: step.volume.id, target: step.target });
          return updateVm(tx, row.id, { pending_disk: null });
        });
    }
  }

  return {
    /** Runs the step on this host and commits its result; HYPERVISOR_ERROR (its first phase undone) if libvirt refuses. */
    async run(vmId: string, step: HostStep): Promise<VmRecord | undefined> {
      if (step.kind === 'snapshot-disks') {
        await snapshotTogether({ pool, logger, compute: deps.compute, kvm: deps.kvm }, vmId, step.members);
        return undefined;
      }
      const vm = await findVm(pool, vmId, null);
      if (!vm || !stillPending(vm, step)) {
        logger.warn({ vmId, step: step.kind, state: vm?.state }, 'VM step not run: its VM was settled meanwhile');
        return vm;
      }
      const host = vm.hostId ? await findHost(pool, vm.hostId) : undefined;
      let compute: ComputeDriver;
      try {
        if (!host) throw new ConflictError('NO_HOST', `VM ${vm.id} has no host`, { vmId: vm.id });
        compute = deps.compute.forHost(host);
      } catch (err) {
        // Nothing reached the hypervisor: the row goes back to where it was, with the reason.
        await undo(pool, vm, step, err instanceof Error ? err.message : String(err), stateBefore(vm, step));
        throw err;
      }
      return runStep(vm, step, compute);
    },
  };
}

/** What the step does, in a user's words (events, errors). */
function describe(vm: VmRecord, step: VmStep): string {
  switch (step.kind) {
    case 'start':
      return `starting VM ${vm.name}`;
    case 'stop':
      return `stopping VM ${vm.name}`;
    case 'reboot':
      return `rebooting VM ${vm.name}`;
    case 'attach':
      return `hot-plugging volume ${step.volume.name} into VM ${vm.name}`;
    case 'detach':
      return `hot-unplugging volume ${step.volume.name} from VM ${vm.name}`;
    case 'media':
      return step.isoPath ? `inserting ISO ${step.isoName} into VM ${vm.name}` : `ejecting the ISO of VM ${vm.name}`;
  }
}

export type VmStepRunner = ReturnType<typeof createVmStepRunner>;
