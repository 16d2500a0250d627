/**
 * The compute drivers of the hosts this process reaches, by libvirt URI (docs/design.md §15). The local
 * libvirt is ensured once at start-up (app/stack.ts); when it could not be, its reason is kept and every VM
 * action on a host of that URI is refused with it, while storage work and the XenServer path go on.
 */
import type { Logger } from 'pino';
import { ServiceUnavailableError } from '../domain/errors.js';
import type { ComputeDriver } from './driver.js';
import { LibvirtComputeDriver } from './libvirt.js';
import { UNPROBED, type Accelerator, type AcceleratorChoice } from './accelerator.js';

export interface ComputeRegistry {
  /** The driver of the host; HYPERVISOR_UNAVAILABLE when it has no URI or its libvirt could not be reached. */
  forHost(host: { name: string; uri: string | null }): ComputeDriver;
  /** The drivers of the reachable hosts (the power-state sync walks them). */
  reachable(): ComputeDriver[];
  /** The local libvirt's URI and whether it answered at start-up (with the reason when not). */
  readonly local: { uri: string; available: boolean; reason: string | null };
  /** What a VM on `host` starts under: the local host's probed accelerator; TCG on others (not probed here). */
  acceleratorFor(host: { uri: string | null }): Accelerator;
  /** The local host's accelerator, once probed (or configured). */
  setLocalAccelerator(choice: AcceleratorChoice): void;
}

export interface ComputeRegistryOptions {
  local: { uri: string; available: boolean; reason: string | null };
  workDir: string;
  logger: Logger;
  stopTimeoutMs: number;
}

export function createComputeRegistry(opts: ComputeRegistryOptions): ComputeRegistry {
  const drivers = new Map<string, ComputeDriver>();
  const driverOf = (uri: string) => {
    let d = drivers.get(uri);
    if (!d) drivers.set(uri, (d = new LibvirtComputeDriver({ uri, workDir: opts.workDir, logger: opts.logger, stopTimeoutMs: opts.stopTimeoutMs })));
    return d;
  };
  let localAccelerator: AcceleratorChoice = UNPROBED;
  return {
    local: opts.local,
    acceleratorFor: (host) => (host.uri === opts.local.uri ? localAccelerator.accelerator : 'qemu'),
    setLocalAccelerator: (choice) => {
      localAccelerator = choice;
    },
    forHost(host) {
      if (!host.uri) {
        throw new ServiceUnavailableError('HYPERVISOR_UNAVAILABLE', `host ${host.name} is not connected (it has no libvirt URI); no VM can run there`, { host: host.name }, 30);
      }
      if (host.uri === opts.local.uri && !opts.local.available) {
        // The reason (with its paths and log lines) is in the start-up log, for operators; users get the fact.
        throw new ServiceUnavailableError('HYPERVISOR_UNAVAILABLE', `the hypervisor of host ${host.name} is unavailable: libvirt did not start on this server (its start-up log says why)`, { host: host.name }, 30);
      }
      return driverOf(host.uri);
    },
    reachable() {
      return opts.local.available ? [driverOf(opts.local.uri)] : [];
    },
  };
}
