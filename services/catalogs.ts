import { listHosts, listIsos, listServiceOfferings, listStoragePools, type HostRecord } from '../db/catalog-queries.js';

/** A host as users see it: whether it is connected, not its libvirt URI. */
export type HostView = Omit<HostRecord, 'uri'> & { connected: boolean };
/** And when its host worker last polled its task queue (Temporal's poller list: pollers of the last few minutes). */
export type HostStatusView = HostView & { hostWorkerLastPoll: string | null };
import type { Pool } from '../db/pool.js';

/** The read-only catalogs seeded at first start (db/catalog.ts). */
export function createCatalogService(deps: { pool: Pool; hostWorkerLastPoll?: (hostName: string) => Promise<Date | null> }) {
  const { pool } = deps;
  return {
    isos: () => listIsos(pool),
    serviceOfferings: () => listServiceOfferings(pool),
    // The libvirt URI stays server-side (it may name users and hosts of a remote transport).
    hosts: async (): Promise<HostView[]> => (await listHosts(pool)).map(({ uri, ...h }) => ({ ...h, connected: uri !== null })),
    /** The hosts with their workers' last poll: one Temporal call per KVM host (the REST list, not lookups). */
    hostsWithWorkers: async (): Promise<HostStatusView[]> => {
      const lastPoll = deps.hostWorkerLastPoll;
      return Promise.all(
        (await listHosts(pool)).map(async ({ uri, ...h }) => ({
          ...h,
          connected: uri !== null,
          hostWorkerLastPoll: lastPoll && h.hypervisor === 'KVM' ? ((await lastPoll(h.name).catch(() => null))?.toISOString() ?? null) : null,
        })),
      );
    },
    storagePools: () => listStoragePools(pool),
  };
}

export type CatalogService = ReturnType<typeof createCatalogService>;
