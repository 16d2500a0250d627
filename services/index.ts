import type { Logger } from 'pino';
import type { Pool } from '../db/pool.js';
import type { Hypervisor } from '../db/vms.js';
import type { StorageDriver } from '../storage/driver.js';
import { createAccountService } from './accounts.js';
import { createCatalogService } from './catalogs.js';
import { createConfigurationService } from './configurations.js';
import { createEventBus } from './event-bus.js';
import { createEventService } from './events.js';
import type { SnapshotService } from './snapshots.js';
import type { BackupScrubService } from './backup-scrub.js';
import type { StorageGcService } from './storage-gc.js';
import { createVmService } from './vms.js';
import type { VmStepDispatcher } from './vm-step-dispatch.js';
import { createVolumeService } from './volumes.js';

/** What the API's services are built from: a slice of the running stack. */
export interface ServiceStack {
  pool: Pool;
  logger: Logger;
  drivers: Partial<Record<Hypervisor, StorageDriver>>;
  snapshots: SnapshotService;
  storageGc?: StorageGcService;
  backupScrub?: BackupScrubService;
  /** Where KVM VM steps run (their hosts); null or absent: KVM VMs are records only (KVM_COMPUTE=none). */
  vmSteps?: VmStepDispatcher | null;
  /** When a KVM host's worker last polled its task queue (KVM_COMPUTE=libvirt). */
  hostWorkerLastPoll?: ((hostName: string) => Promise<Date | null>) | null;
  consoleDir?: string;
}

/** Builds every service the HTTP API uses over one stack. */
export function createServices(stack: ServiceStack) {
  const deps = {
    pool: stack.pool,
    drivers: stack.drivers,
    logger: stack.logger,
    ...(stack.vmSteps ? { vmSteps: stack.vmSteps } : {}),
    ...(stack.consoleDir ? { consoleDir: stack.consoleDir } : {}),
  };
  return {
    accounts: createAccountService(deps),
    configurations: createConfigurationService({
      ...deps,
      ...(stack.storageGc ? { storageGc: stack.storageGc } : {}),
      ...(stack.backupScrub ? { backupScrub: stack.backupScrub } : {}),
    }),
    catalogs: createCatalogService({ ...deps, ...(stack.hostWorkerLastPoll ? { hostWorkerLastPoll: stack.hostWorkerLastPoll } : {}) }),
    vms: createVmService(deps),
    volumes: createVolumeService(deps),
    // The one snapshot module (services/snapshots.ts), built with the stack because the workers' tests use it too.
    snapshots: stack.snapshots,
    events: createEventService(deps),
    eventBus: createEventBus(stack.pool, stack.logger.child({ component: 'event-bus' })),
  };
}

export type Services = ReturnType<typeof createServices>;
