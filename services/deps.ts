import type { Logger } from 'pino';
import { listStoragePools, type StoragePoolRecord } from '../db/catalog-queries.js';
import type { Pool, Queryable } from '../db/pool.js';
import type { Hypervisor } from '../db/vms.js';
import { ConflictError, ValidationError } from '../domain/errors.js';
import type { StorageDriver } from '../storage/driver.js';
import type { ComputeRegistry } from '../compute/registry.js';
import type { GuestBoot } from '../compute/test-guest.js';

/** What the VM, volume and snapshot services need: the database, the storage drivers, a logger. */
export interface ServiceDeps {
  pool: Pool;
  drivers: Partial<Record<Hypervisor, StorageDriver>>;
  logger: Logger;
  /** The hosts' compute drivers (KVM over libvirt); without it KVM VM actions change only their rows. */
  compute?: ComputeRegistry;
  /** Where the VMs' serial consoles are written (one log file per VM). */
  consoleDir?: string;
  /** The kernel KVM VMs boot directly (the test guest), or none: they boot their ROOT disk. */
  vmBoot?: GuestBoot;
}

/** The storage driver of `hypervisor`; a hypervisor without one (XenServer, for now) is refused as bad input. */
export function driverFor(deps: Pick<ServiceDeps, 'drivers'>, hypervisor: Hypervisor): StorageDriver {
  const driver = deps.drivers[hypervisor];
  if (!driver) {
    throw new ValidationError(`hypervisor ${hypervisor} is not supported by this server: no ${hypervisor} storage driver is configured`, {
      hypervisor: `no ${hypervisor} storage driver is configured on this server`,
    });
  }
  return driver;
}

/** Where new volumes of `hypervisor` go: its first storage pool. */
export async function defaultStoragePool(db: Queryable, hypervisor: Hypervisor): Promise<StoragePoolRecord> {
  const [pool] = await listStoragePools(db, hypervisor);
  if (!pool) throw new ConflictError('NO_STORAGE_POOL', `no ${hypervisor} storage pool is configured`, { hypervisor });
  return pool;
}
