import type { Logger } from 'pino';
import { listStoragePools, type StoragePoolRecord } from '../db/catalog-queries.js';
import type { Pool, Queryable } from '../db/pool.js';
import type { Hypervisor } from '../db/vms.js';
import { ConflictError, ValidationError } from '../domain/errors.js';
import type { StorageDriver } from '../storage/driver.js';
import type { VmStepDispatcher } from './vm-step-dispatch.js';

/** What the VM, volume and snapshot services need: the database, the storage drivers, a logger. */
export interface ServiceDeps {
  pool: Pool;
  drivers: Partial<Record<Hypervisor, StorageDriver>>;
  logger: Logger;
  /** Where KVM VM actions' hypervisor steps run (their hosts); without it KVM VM actions change only their rows. */
  vmSteps?: VmStepDispatcher;
  /** Where the VMs' serial consoles are written (one log file per VM). */
  consoleDir?: string;
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
