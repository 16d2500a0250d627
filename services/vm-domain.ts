/**
 * The libvirt domain of a VM, from its row alone (docs/design.md §15): vCPUs and memory from its offering, its
 * live volumes as virtio disks by device id (vda is device 0), a serial console to a log file per VM.
 */
import path from 'node:path';
import { findServiceOffering, isoImagePath } from '../db/catalog-queries.js';
import type { Queryable } from '../db/pool.js';
import type { VmRecord } from '../db/vms.js';
import { volumesOfVms } from '../db/volumes.js';
import type { DomainSpec } from '../compute/domain-xml.js';
import type { GuestBoot } from '../compute/test-guest.js';

export async function domainSpecOf(db: Queryable, vm: VmRecord, consoleDir: string, accelerator: 'kvm' | 'qemu', boot?: GuestBoot): Promise<DomainSpec> {
  const offering = vm.serviceOfferingId ? await findServiceOffering(db, vm.serviceOfferingId) : undefined;
  const volumes = (await volumesOfVms(db, [vm.id])).filter((v) => v.vmId === vm.id && v.state !== 'Destroyed');
  volumes.sort((a, b) => (a.deviceId ?? 0) - (b.deviceId ?? 0));
  return {
    vmId: vm.id,
    title: vm.name,
    vcpus: offering?.cpuCount ?? 1,
    memoryMb: offering?.memoryMb ?? 512,
    // As the host's probe found (compute/accelerator.ts): KVM hung here after the kernel decompressed.
    accelerator,
    disks: volumes.map((v) => ({ volumeId: v.id, path: v.path, deviceId: v.deviceId ?? 0 })),
    isoPath: vm.isoId ? await isoImagePath(db, vm.isoId) : null,
    consoleLog: consoleLogOf(consoleDir, vm.id),
    user: { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 },
    boot,
  };
}

/** The VM's serial console log file. */
export function consoleLogOf(consoleDir: string, vmId: string): string {
  return path.join(consoleDir, `${vmId}.log`);
}
