import { listHosts, listIsos, listServiceOfferings, listStoragePools, type HostRecord } from '../db/catalog-queries.js';

/** A host as users see it: whether it is connected, not its libvirt URI. */
export type HostView = Omit<HostRecord, 'uri'> & { connected: boolean };
import type { Pool } from '../db/pool.js';

/** The read-only catalogs seeded at first start (db/catalog.ts). */
export function createCatalogService(deps: { pool: Pool }) {
  const { pool } = deps;
  return {
    isos: () => listIsos(pool),
    serviceOfferings: () => listServiceOfferings(pool),
    // The libvirt URI stays server-side (it may name users and hosts of a remote transport).
    hosts: async (): Promise<HostView[]> => (await listHosts(pool)).map(({ uri, ...h }) => ({ ...h, connected: uri !== null })),
    storagePools: () => listStoragePools(pool),
  };
}

export type CatalogService = ReturnType<typeof createCatalogService>;
