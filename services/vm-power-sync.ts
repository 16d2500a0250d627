/**
 * Keeps VM rows true to their hosts (docs/design.md §15), as CloudStack's power-state sync does: a guest that
 * powered itself off, crashed or was stopped by an operator on the host is recorded Stopped; a VM whose action's
 * process died between its two phases (Starting, Stopping) is settled from what libvirt says. Every change is
 * guarded by the state and `state_since` it was decided on, so an action that moved the VM meanwhile wins, and
 * two workers running this at once change a row once.
 */
import type { Logger } from 'pino';
import type { ComputeDriver, PowerState } from '../compute/driver.js';
import type { ComputeRegistry } from '../compute/registry.js';
import { recordEvent, type EventLevel } from '../db/events.js';
import { lockVm, lockVmVolumes } from '../db/locks.js';
import { liveVolumeByPath, updateVolume, volumesOfVms, type VolumeRecord } from '../db/volumes.js';
import { CDROM_TARGET } from '../compute/domain-xml.js';
import { withTransaction, type Pool } from '../db/pool.js';
import { liveKvmVms, staleTransitionalVms, updateVm, type KvmVmOnHost, type VmState } from '../db/vms.js';

export interface PowerSyncResult {
  /** VMs whose row changed, with the state it changed to. */
  changed: Array<{ vmId: string; from: VmState; to: VmState }>;
  /** Volumes whose attachment was recorded as the running domain has it. */
  disks: Array<{ vmId: string; volumeId: string; now: 'attached' | 'detached' }>;
  /** Domains named as volsnap's whose VM has no live row (left alone for an operator, logged). */
  unknownDomains: string[];
}

export interface PowerSyncDeps {
  pool: Pool;
  logger: Logger;
  compute: ComputeRegistry;
  /** A Starting/Stopping row older than this is settled from libvirt. */
  staleMs: number;
}

const DOWN: ReadonlySet<PowerState> = new Set(['absent', 'crashed']);
const UP: ReadonlySet<PowerState> = new Set(['running', 'paused']);

export function createVmPowerSync(deps: PowerSyncDeps) {
  const log = deps.logger.child({ component: 'vm-power-sync' });

  /** Moves the VM to `to` if it is still as it was read; false when something else moved it first. */
  async function move(vm: KvmVmOnHost, to: VmState, type: string, level: EventLevel, description: string, power: PowerState) {
    return withTransaction(deps.pool, async (tx) => {
      const row = await lockVm(tx, vm.id, null).catch(() => null);
      if (!row || row.state !== vm.state || row.stateSince !== vm.stateSince) return false;
      await updateVm(tx, vm.id, { state: to });
      await recordEvent(tx, {
        type,
        level,
        accountId: vm.accountId,
        resourceType: 'VirtualMachine',
        resourceId: vm.id,
        description,
        details: { vmId: vm.id, from: vm.state, to, hostPowerState: power, host: vm.hostUri, by: 'power-sync' },
      });
      return true;
    });
  }

  async function syncOnce(): Promise<PowerSyncResult> {
    const result: PowerSyncResult = { changed: [], disks: [], unknownDomains: [] };
    const drivers = new Map<string, ComputeDriver>(deps.compute.reachable().map((d) => [d.uri, d]));
    if (drivers.size === 0) return result;
    // Rows first, domains after: a VM that was Running when read had its domain started before, so a domain
    // missing from the later listing really went away (unless the VM moved, which the guard sees).
    const live = await liveKvmVms(deps.pool);
    const stale = await staleTransitionalVms(deps.pool, deps.staleMs);
    const domains = new Map<string, Map<string, PowerState>>();
    for (const [uri, driver] of drivers) {
      const listed = await driver.list().catch((err: unknown) => {
        log.warn({ err, uri }, 'listing the domains of a host failed; its VMs are left as recorded this round');
        return null;
      });
      if (listed) domains.set(uri, listed);
    }
    const powerOf = (vm: KvmVmOnHost): PowerState | null => {
      const listed = vm.hostUri ? domains.get(vm.hostUri) : undefined;
      return listed ? (listed.get(vm.id) ?? 'absent') : null;
    };
    const apply = async (vm: KvmVmOnHost, to: VmState, type: string, level: EventLevel, description: string, power: PowerState) => {
      if (await move(vm, to, type, level, description, power)) {
        result.changed.push({ vmId: vm.id, from: vm.state, to });
        log[level === 'INFO' ? 'info' : 'warn']({ vmId: vm.id, from: vm.state, to, hostPowerState: power }, description);
      }
    };

    for (const vm of live) {
      const power = powerOf(vm);
      if (power === null) continue;
      if (vm.state === 'Running' && DOWN.has(power)) {
        const how = power === 'crashed' ? 'crashed' : 'was found stopped';
        await apply(vm, 'Stopped', 'VM.STOP', 'WARN', `VM ${vm.name} ${how} on its host; volsnap did not stop it`, power);
      } else if (vm.state === 'Stopped' && UP.has(power)) {
        await apply(vm, 'Running', 'VM.START', 'WARN', `VM ${vm.name} was found running on its host; volsnap did not start it`, power);
      }
    }
    for (const vm of stale) {
      const power = powerOf(vm);
      if (power === null) continue;
      const left = `VM ${vm.name} was left ${vm.state} by an action whose process stopped`;
      if (UP.has(power)) await apply(vm, 'Running', 'VM.START', 'WARN', `${left}; its host says it is running`, power);
      else if (DOWN.has(power)) await apply(vm, 'Stopped', 'VM.STOP', 'WARN', `${left}; its host says it is stopped`, power);
      // Shutting down or another passing state: the next round sees where it ends.
    }

    for (const vm of live) {
      const power = powerOf(vm);
      if (vm.state !== 'Running' || power === null || !UP.has(power)) continue;
      if (vm.pendingDisk && Date.now() - Date.parse(vm.pendingDiskSince!) < deps.staleMs) continue;
      await syncDisks(vm, drivers.get(vm.hostUri!)!, result).catch((err: unknown) =>
        log.warn({ err, vmId: vm.id }, 'comparing a VM\'s disks with its domain failed; the next round retries'),
      );
    }

    const known = new Set(live.map((vm) => vm.id));
    for (const [uri, listed] of domains) {
      for (const vmId of listed.keys()) {
        if (known.has(vmId)) continue;
        result.unknownDomains.push(vmId);
        log.warn({ vmId, uri }, 'a volsnap domain runs for a VM with no live row; left alone for an operator');
      }
    }
    return result;
  }

  /**
   * Records the running domain's disks as the VM's attachments: the domain is the truth (an operator's
   * `virsh detach-disk`, or a hot-plug whose process died between its two commits, marked pending and now stale).
   * ROOT stays attached whatever; a domain disk that is another VM's volume is left for an operator.
   */
  async function syncDisks(vm: KvmVmOnHost, driver: ComputeDriver, result: PowerSyncResult): Promise<void> {
    const onHost = await driver.disks(vm.id);
    const rows = (await volumesOfVms(deps.pool, [vm.id])).filter((v) => v.vmId === vm.id && v.state !== 'Destroyed');
    const paths = new Map([...onHost].filter(([target]) => target !== CDROM_TARGET).map(([target, file]) => [file, target]));
    const gone = rows.filter((v) => v.type !== 'ROOT' && !paths.has(v.path));
    const extra = [...paths].filter(([file]) => !rows.some((v) => v.path === file));
    if (gone.length === 0 && extra.length === 0 && !vm.pendingDisk) return;
    const found: Array<{ volume: VolumeRecord; target: string }> = [];
    for (const [file, target] of extra) {
      const volume = await liveVolumeByPath(deps.pool, file);
      if (volume && volume.vmId === null && volume.type === 'DATADISK') found.push({ volume, target });
      else if (volume && volume.vmId !== vm.id) log.error({ vmId: vm.id, volumeId: volume.id, target, attachedTo: volume.vmId }, 'a running domain has a volume the rows give to another VM; left for an operator');
    }
    await withTransaction(deps.pool, async (tx) => {
      const row = await lockVm(tx, vm.id, null).catch(() => null);
      // Every attach and detach writes the VM row: unchanged since it was read, the rows read then still hold.
      if (!row || row.state !== 'Running' || row.updatedAt !== vm.updatedAt) return;
      await lockVmVolumes(tx, vm.id);
      const event = (volumeId: string, type: string, description: string) =>
        recordEvent(tx, {
          type,
          level: 'WARN',
          accountId: vm.accountId,
          resourceType: 'VirtualMachine',
          resourceId: vm.id,
          description,
          details: { vmId: vm.id, volumeId, by: 'power-sync', pendingDisk: vm.pendingDisk },
        });
      for (const v of gone) {
        await updateVolume(tx, v.id, { vm_id: null, device_id: null });
        await event(v.id, 'VOLUME.DETACH', `volume ${v.name} is not attached to VM ${vm.name} on its host; recorded detached`);
        result.disks.push({ vmId: vm.id, volumeId: v.id, now: 'detached' });
      }
      for (const { volume, target } of found) {
        await updateVolume(tx, volume.id, { vm_id: vm.id, device_id: target.charCodeAt(2) - 97 });
        await event(volume.id, 'VOLUME.ATTACH', `volume ${volume.name} is attached to VM ${vm.name} on its host (${target}); recorded attached`);
        result.disks.push({ vmId: vm.id, volumeId: volume.id, now: 'attached' });
      }
      if (vm.pendingDisk) await updateVm(tx, vm.id, { pending_disk: null });
    });
    for (const d of result.disks.filter((x) => x.vmId === vm.id)) log.warn(d, 'recorded a VM disk as its domain has it');
  }

  return { syncOnce };
}

export type VmPowerSync = ReturnType<typeof createVmPowerSync>;
