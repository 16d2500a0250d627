/**
 * Which running VM's QEMU holds a volume's image (docs/design.md §15), for the KVM storage driver: a snapshot of
 * a running VM's disk is taken and deleted by its QEMU (QMP, milliseconds, the guest runs on), since qemu-img
 * cannot get the image's write lock from it. Reads (backups) go on with qemu-img's shared access.
 */
import type { ComputeRegistry } from '../compute/registry.js';
import type { Pool } from '../db/pool.js';
import { vmOfImage } from '../db/volumes.js';
import type { LiveImage, LiveImageResolver } from '../storage/kvm.js';

export function liveImageResolver(pool: Pool, compute: ComputeRegistry): LiveImageResolver {
  return async (volumePath): Promise<LiveImage | null> => {
    const vm = await vmOfImage(pool, volumePath);
    // Any state but Stopped: a Starting or Stopping VM's QEMU may hold the image as well.
    if (!vm || vm.state === 'Stopped' || vm.state === 'Destroyed') return null;
    const driver = compute.forHost({ name: vm.hostName, uri: vm.hostUri });
    return {
      vmId: vm.vmId,
      createSnapshot: async (tag) => (await driver.snapshotDiskLive(vm.vmId, volumePath, tag)) === 'taken',
      deleteSnapshot: async (tag) => (await driver.deleteDiskSnapshotLive(vm.vmId, volumePath, tag)) === 'deleted',
    };
  };
}
